"""Console entry points.

oslo.messaging imports oslo.service, whose eventlet backend warns at
import time although warmer never uses eventlet; keep that out of the
operator's logs.
"""

import warnings

warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")
