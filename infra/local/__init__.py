"""The local runtime: template.yaml run in one process on moto, served over real HTTP."""
