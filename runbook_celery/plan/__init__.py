"""Pure: what a run executes, frozen at trigger time (snapshot, plan and mode), its
typed records and secret masking; ``lint`` runs shellcheck over the placed Bash."""
