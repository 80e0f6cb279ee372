"""The step task's stages (see ``delivery``): importing them registers no task and
connects no signal."""
