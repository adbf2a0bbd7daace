"""The error hierarchy, arranged by what callers catch.

    CloudLandError                  anything CloudLand raises on purpose
    ├── ConfigError                 a setting is invalid (raised at start-up)
    ├── InvalidRequest              a caller's request is malformed; never retried
    │   ├── UnknownOperation        no agent operation has that name
    │   ├── UnknownHypervisor       a target id is outside the tree
    │   ├── NotFound                no such resource in the caller's organisation (HTTP 404)
    │   ├── Conflict                the request clashes with existing state (HTTP 409)
    │   │   └── QuotaExceeded       a create would take a project or organisation past a quota (HTTP 409)
    │   ├── PayloadTooLarge         a request body exceeds a configured limit (HTTP 413)
    │   └── UnsupportedMediaType    a request body has the wrong Content-Type (HTTP 415)
    ├── Unauthorized                no valid credentials or token (HTTP 401)
    ├── Forbidden                   authenticated, but the role may not do this (HTTP 403)
    ├── Overloaded                  the API is saturated and turns the request away (HTTP 429)
    ├── TooManyRequests             repeated failed sign-ins: wait ``retry_after`` seconds (HTTP 429)
    ├── WireError                   a message on an MPI link is not a valid envelope
    ├── TreeError                   the tree could not do what was asked
    │   ├── PeerLost                a relay or leaf rank died or went silent
    │   └── SpawnError              a rank could not be started
    ├── RootUnreachable             the root's gRPC endpoint does not answer
    ├── DirectoryUnavailable        an organisation's LDAP server or OpenID provider does not answer (HTTP 503)
    ├── ApiUnreachable              the REST API does not answer (CLI side)
    └── HypervisorError             an operation failed on a hypervisor
        ├── AgentFailed             an agent's reply through the tree says it failed
        └── DriverError             libvirt (or another driver) refused
            ├── VMNotFound          no such VM on that hypervisor
            ├── VMConflict          a name or uuid is held by another VM
            ├── VMStateError        the VM is in the wrong power state for the verb
            ├── ImageError          an image could not be fetched, overlaid or captured
            │   └── ImageMismatch   fetched bytes have the wrong size or sha256
            └── VolumeError         a volume could not be made, changed, attached or removed
                ├── VolumeNotFound  no such volume, snapshot or domain for a volume verb
                └── VolumeBusy      in use, has snapshots, or its device name is taken

Every message names what failed and where: hypervisor id, job id, peer.
Third-party errors are translated at the boundary with ``raise ... from exc``.
"""


class CloudLandError(Exception):
    """Raised when CloudLand fails on purpose; the base of every error below."""


class ConfigError(CloudLandError):
    """Raised when a setting is missing or out of range, at start-up."""


class InvalidRequest(CloudLandError):
    """Raised when a request (targets, job id, arguments) is malformed."""


class UnknownOperation(InvalidRequest):
    """Raised when an agent is asked for an operation it has not registered."""


class UnknownHypervisor(InvalidRequest):
    """Raised when a target hypervisor id is not in the tree."""


class NotFound(InvalidRequest):
    """Raised when a resource does not exist in the caller's organisation.

    Another organisation's resource is also "not found", never "forbidden", so
    ids cannot be probed across tenants.
    """


class Conflict(InvalidRequest):
    """Raised when a create or change clashes with existing state (a taken name)."""


class QuotaExceeded(Conflict):
    """Raised when a create would take a project or organisation past one of its quota limits."""


class PayloadTooLarge(InvalidRequest):
    """Raised when a request body (an image upload) is larger than the configured limit."""


class UnsupportedMediaType(InvalidRequest):
    """Raised when a request body is sent with a Content-Type the endpoint does not take."""


class Unauthorized(CloudLandError):
    """Raised when credentials or a bearer token are missing, wrong or expired."""


class Forbidden(CloudLandError):
    """Raised when an authenticated caller's role does not allow the action."""


class Overloaded(CloudLandError):
    """Raised when the API is saturated and turns a request away unserved (HTTP 429 with
    Retry-After): nothing was done, so the same request may be sent again later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyRequests(CloudLandError):
    """Raised when a username failed to sign in from one address too often: the next try must
    wait ``retry_after`` seconds (the HTTP answer's Retry-After)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WireError(CloudLandError):
    """Raised when bytes from an MPI link do not decode to a valid envelope."""


class TreeError(CloudLandError):
    """Raised when the message tree cannot carry out a request."""


class PeerLost(TreeError):
    """Raised when a relay or leaf rank is dead or silent past the lost threshold."""


class SpawnError(TreeError):
    """Raised when MPI cannot start a relay or leaf rank."""


class RootUnreachable(CloudLandError):
    """Raised when the root's gRPC endpoint does not answer."""


class DirectoryUnavailable(CloudLandError):
    """Raised when an organisation's identity directory (its LDAP server or OpenID provider) does
    not answer, or refuses CloudLand's own bind: the message names the organisation and the URL."""


class ApiUnreachable(CloudLandError):
    """Raised when the REST API's endpoint refuses or drops the connection (in the CLI)."""


class HypervisorError(CloudLandError):
    """Raised when an operation fails on a hypervisor; the message names it."""

    def __init__(self, hypervisor: int, message: str, job_id: str = "") -> None:
        where = f"hypervisor {hypervisor}" + (f", job {job_id}" if job_id else "")
        super().__init__(f"{message} ({where})")
        self.hypervisor = hypervisor
        self.job_id = job_id


class AgentFailed(HypervisorError):
    """Raised when an agent's reply through the tree says its operation failed or was refused.

    The agent's message names the hypervisor (and the job) already, so it is kept as it is.
    """

    def __init__(self, hypervisor: int, message: str) -> None:
        CloudLandError.__init__(self, message)
        self.hypervisor = hypervisor
        self.job_id = ""


class DriverError(HypervisorError):
    """Raised when libvirt or another driver refuses an operation."""


class VMNotFound(DriverError):
    """Raised when no domain of the given name exists on the hypervisor."""


class VMConflict(DriverError):
    """Raised when a create's name or uuid is already held by a different VM."""


class VMStateError(DriverError):
    """Raised when a verb needs another power state (e.g. resize of a running VM)."""


class ImageError(DriverError):
    """Raised when an image cannot be fetched, overlaid, captured or removed on a hypervisor."""


class ImageMismatch(ImageError):
    """Raised when fetched bytes do not have the size or sha256 the image's record says."""


class VolumeError(DriverError):
    """Raised when a volume cannot be created, changed, attached, detached or removed on a hypervisor."""


class VolumeNotFound(VolumeError):
    """Raised when a volume verb names a volume, snapshot or domain that does not exist."""


class VolumeBusy(VolumeError):
    """Raised when a volume is attached, has snapshots, or a device name is held by another disk."""

