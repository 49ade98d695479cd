"""The control API's controllers, one per resource of ``shared/specs/factorytx-rest-api.txt``."""

from api.controllers.config import ConfigController
from api.controllers.ftx import FtxController
from api.controllers.log import LogController
from api.controllers.meta import MetaController
from api.controllers.restream import RestreamController
from api.controllers.status import MetricsController, StatusController
from api.controllers.streams import StreamsController

CONTROLLERS = [ConfigController, FtxController, LogController, MetaController, StatusController,
               StreamsController, RestreamController, MetricsController]

__all__ = ["CONTROLLERS"]
