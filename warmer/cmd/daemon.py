"""``warmer-daemon --config-file FILE``: the systemd service's main."""

from __future__ import annotations

import asyncio
import faulthandler
import sys

from oslo_log import log

from warmer import conf as warmer_conf
from warmer import memory
from warmer.service import Service


def main(argv: list[str] | None = None) -> int:
    # A crash in librados/librbd (SIGABRT, SIGSEGV) prints every thread's
    # Python stack to stderr, hence to the journal: which call it was.
    faulthandler.enable()
    conf = warmer_conf.load(sys.argv[1:] if argv is None else argv)
    log.setup(conf, "warmer")
    memory.pin_mmap_threshold()
    return asyncio.run(Service(conf).run())


if __name__ == "__main__":
    sys.exit(main())
