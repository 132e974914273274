"""The system's own actors: who a history entry names for a change no person or API key made."""

WORKFLOW_ACTOR = "workflow"
BACKORDER_ACTOR = "backorders"
SCAN_ACTOR = "jeopardy_scan"  # core/jeopardy.py's scan
