"""The local web demo (``flexitok demo``): FastAPI app + a static HTML/JS page. Needs ``pip install 'flexitok[demo]'``.

``config`` (what is served, limits), ``service`` (the work behind the routes), ``queue`` (admission of heavy
work), ``upload`` (request bodies read within bounds), ``app`` (the routes), ``generation`` (the generation panel).
"""

from flexitok.demo.app import create_app
from flexitok.demo.config import DemoConfig, DemoModel, GeneratorBackend
from flexitok.demo.service import DemoService

__all__ = ["DemoConfig", "DemoModel", "DemoService", "GeneratorBackend", "create_app"]
