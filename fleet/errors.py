"""Exceptions raised by the fleet package.

Every message names the file or value that failed and the fix, so a task can
print it as it is and exit non-zero.
"""


class FleetError(Exception):
    """Base class of every error the builder reports to the operator."""


class ConfigError(FleetError):
    """Invalid or missing region settings (regions.toml and the files it names)."""


class ImageError(FleetError):
    """No machine image could be resolved for a region."""


class RenderError(FleetError):
    """A Vagrantfile could not be rendered for a region."""


class VagrantError(FleetError):
    """A Vagrant command failed or printed output that could not be parsed."""


class CloudError(FleetError):
    """A cloud API call (Scaleway Instance API, AWS) failed."""
