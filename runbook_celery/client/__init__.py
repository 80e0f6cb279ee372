"""What a client process uses: ``submit()``/``Run`` (sync and async), operator
decisions (``control``), the beat scheduler, and the run views every client shares."""
