"""ringmux-fork: a warm fork server for ringmux (``ringmux serve --fork``).

``python -m ringmux_fork my_tools:app`` imports the app once, then forks a
copy-on-write child per rollout on ringmux's request. The children are made
children of ringmux itself (``clone3(CLONE_PARENT | CLONE_PIDFD)``), so
ringmux reaps them with their exit status and they are never zombies here.
"""

from .protocol import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
__version__ = "0.1.0"
