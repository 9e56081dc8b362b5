"""An app that sets up logging itself at import (unless ``APP_LOGGING=off``): the command line
must keep its handler and format (``APP-FORMAT <level> <logger>: <message>``)."""

from __future__ import annotations

import logging
import os

from tests.apps.delivery_app import server

if os.environ.get("APP_LOGGING") != "off":
    logging.basicConfig(level=logging.INFO, format="APP-FORMAT %(levelname)s %(name)s: %(message)s")

__all__ = ["server"]
