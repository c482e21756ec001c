"""``mmsparse serve``: an HTTP search service and web page over an index.

:func:`create_app` builds the FastAPI application (optional extra ``mmsparse[serve]``:
FastAPI and uvicorn, imported on first use with an install hint);
:class:`SearchService` is the web-independent core (index opened once, request checks,
query encoder off the event loop, bounded in-flight requests). See docs/serving.md.
"""

from mmsparse.serve.app import create_app
from mmsparse.serve.limits import ServeLimits
from mmsparse.serve.params import BadRequest, Overloaded
from mmsparse.serve.service import SearchService

__all__ = ["BadRequest", "Overloaded", "SearchService", "ServeLimits", "create_app"]
