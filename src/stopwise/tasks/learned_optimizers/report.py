"""Placeholder report (replaced below)."""

from __future__ import annotations

from ...contract import JobResult, Report


def report(results: list[JobResult], config) -> Report:
    return Report(results={"jobs": {r.id: r.record for r in results}}, table="", summary="")
