"""The returns workflow's task handler (infra/return_workflow.asl.json)."""
