"""``python -m ringmux_fork``: see :func:`ringmux_fork.server.main`."""

from .server import main

if __name__ == "__main__":
    main()
