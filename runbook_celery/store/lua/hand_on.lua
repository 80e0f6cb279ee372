hand_on(1, 1, ready_successors(1, 1))
return 1
