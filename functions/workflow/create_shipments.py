"""Workflow task CreateShipments: one pending shipment per location, with the carrier's label."""

from __future__ import annotations

from functions.workflow.step import step_handler

lambda_handler = step_handler(lambda workflow, step: workflow.create_shipments(step.order_id))
