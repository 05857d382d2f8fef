"""Error values shared by the whole package.

Every error carries a human-readable message; the daemons send that message
as a failure reply, the client prints it.
"""


class AlbatrossError(Exception):
    """Base class of all errors raised by this package on bad input."""

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class DecodeError(AlbatrossError):
    """Malformed DER, an unknown alternative, a bad name in a message..."""


class EncodeError(AlbatrossError):
    """A value that cannot be represented on the wire."""


class NameError_(AlbatrossError):
    """An invalid label, path or name."""


class FrameError(AlbatrossError):
    """A length prefix that is negative or larger than allowed."""


class PolicyError(AlbatrossError):
    """A policy or resource check failed."""
