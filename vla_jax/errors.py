"""Errors that the command line reports as one clear line instead of a traceback."""


class VlaJaxError(Exception):
    """A user-facing error: bad config, bad data, unusable checkpoint."""


class ConfigError(VlaJaxError):
    """A config file, field or override is wrong."""


class DataError(VlaJaxError):
    """A dataset is missing, malformed or does not match its spec."""


class CheckpointError(VlaJaxError):
    """No usable checkpoint where one was required."""


class ObservationError(VlaJaxError):
    """A robot observation given to a policy is malformed (missing key, wrong shape, dtype or value)."""


class ConvertError(VlaJaxError):
    """Released weights cannot be imported: an unknown layout, a missing tensor, a wrong shape."""
