"""The API function's container of services, shared by its routes (see functions.bootstrap)."""

from __future__ import annotations

from functions.bootstrap import WarmContainer

container = WarmContainer()
