import signal
import sys

# Record a SIGHUP that arrives while the heavy imports run; the server replays it once its own
# handler is installed (otherwise the default action would kill the process).
signal.signal(signal.SIGHUP, lambda signum, frame: setattr(sys, "_smartgate_early_hangup", True))

from smartgate.cli import main  # noqa: E402 - the handler must come first

sys.exit(main())
