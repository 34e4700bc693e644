"""Catalogue rendering on Ray Data: `render(RenderConfig) -> RenderResult`.

A catalogue (CSV, JSONL, parquet) is checked row by row (`catalogue.py`, `plan.py`), the
rows to render stream through a Base actor pool and a Refiner actor pool of their own
sizes (`pipeline.py`, `actors.py`) to a writer (`writer.py`: PNG with metadata, atomic),
and every finished block lands in the manifest (`manifest.py`) so a killed run resumes
where it stopped. `gallery.py` makes the HTML gallery and contact sheets; `progress.py`
says how far along a run is; `run.py` is the job start to finish.
"""

from bluepri.render.run import RenderResult, render

__all__ = ["RenderResult", "render"]
