"""Request and response bodies (Pydantic), one module per domain, kept apart from the database models.

The names below are the package's whole surface; ``common`` holds what every body shares.
"""

from cloudland_api.schemas.common import (
    MAX_COUNT, MAX_ID, NO_NUL, Arch, DiskFormat, ErrorBody, ErrorResponse, InstanceStatus, JobStateName, Name,
    Page, Ref
)
from cloudland_api.schemas.identity import (
    AccountPublic, AppCredentialCreate, AppCredentialList, AppCredentialPublic, AppCredentialSecret, AuditEventList,
    AuditEventPublic, LoginRequest, MembershipCreate, MembershipUpdate, OrganisationCreate, OrganisationList,
    OrganisationPublic, PasswordChange, TokenPublic, UserCreate, UserList, UserPublic
)
from cloudland_api.schemas.directories import (
    LdapPublic, LdapSettings, OidcLoginRequest, OidcPublic, OidcSettings, OidcStart, OidcStartRequest
)
from cloudland_api.schemas.flavors import FlavorCreate, FlavorList, FlavorPublic
from cloudland_api.schemas.hypervisors import (
    HypervisorDrain, HypervisorList, HypervisorPublic, HypervisorUpdate, RemainingInstance
)
from cloudland_api.schemas.images import ImageCreate, ImageList, ImagePublic, SshKeyCreate, SshKeyList, SshKeyPublic
from cloudland_api.schemas.networks import (
    PortCreate, PortList, PortPublic, SubnetCreate, SubnetList, SubnetPublic, VpcCreate, VpcList, VpcPublic
)
from cloudland_api.schemas.secgroups import (
    PortUpdate, RuleCreate, RulePublic, SecurityGroupCreate, SecurityGroupList, SecurityGroupPublic
)
from cloudland_api.schemas.instances import (
    BatchAccepted, BatchAction, CaptureAccepted, CaptureRequest, ConsoleTicket, InstanceCreate, InstanceList,
    InstancePublic, JobList, JobPublic, NewBootVolume, NicAttach, PowerAction, RebuildRequest, ResizeRequest, VncConsole
)
from cloudland_api.schemas.groups import (
    DirectoryGroupCreate, DirectoryGroupList, DirectoryGroupPublic, GroupCreate, GroupList, GroupMemberPublic, GroupProjectRolePublic, GroupPublic, GroupRole
)
from cloudland_api.schemas.projects import (
    OrganisationQuotaPublic, ProjectCreate, ProjectList, ProjectMemberList, ProjectMemberPublic, ProjectPublic,
    ProjectRoleGrant, QuotaLine, QuotaPublic, QuotaUpdate
)
from cloudland_api.schemas.volumes import (
    AttachmentCreate, AttachmentPublic, SnapshotAccepted, SnapshotCreate, SnapshotList, SnapshotPublic,
    VolumeAccepted, VolumeCreate, VolumeExtend, VolumeList, VolumePublic
)

__all__ = [
    "PortUpdate", "RuleCreate", "RulePublic", "SecurityGroupCreate", "SecurityGroupList", "SecurityGroupPublic",
    "AccountPublic", "AppCredentialCreate", "AppCredentialList", "AppCredentialPublic", "AppCredentialSecret",
    "AuditEventList", "AuditEventPublic", "MembershipCreate", "MembershipUpdate", "OrganisationCreate", "OrganisationList",
    "OrganisationPublic", "PasswordChange", "UserCreate", "UserList", "UserPublic",
    "Arch", "NewBootVolume", "BatchAccepted", "BatchAction", "CaptureAccepted", "CaptureRequest", "ConsoleTicket", "DiskFormat",
    "ErrorBody",
    "ErrorResponse", "FlavorCreate", "FlavorList", "FlavorPublic", "HypervisorDrain", "HypervisorList",
    "HypervisorPublic", "HypervisorUpdate", "ImageCreate", "ImageList", "ImagePublic", "InstanceCreate",
    "InstanceList", "InstancePublic", "InstanceStatus", "JobList", "JobPublic", "JobStateName", "LdapPublic",
    "LdapSettings", "LoginRequest", "OidcLoginRequest", "OidcPublic", "OidcSettings", "OidcStart", "OidcStartRequest",
    "MAX_COUNT", "MAX_ID", "NO_NUL", "Name", "Page", "PortCreate", "PortList", "PortPublic", "PowerAction",
    "NicAttach", "RebuildRequest", "Ref", "RemainingInstance", "ResizeRequest", "SshKeyCreate", "SshKeyList", "SshKeyPublic",
    "SubnetCreate", "SubnetList", "SubnetPublic", "TokenPublic", "VncConsole", "VpcCreate", "VpcList", "VpcPublic",
    "AttachmentCreate", "AttachmentPublic", "SnapshotAccepted", "SnapshotCreate", "SnapshotList", "SnapshotPublic",
    "VolumeAccepted", "VolumeCreate", "VolumeExtend", "VolumeList", "VolumePublic",
    "OrganisationQuotaPublic", "ProjectCreate", "ProjectList", "ProjectMemberList", "ProjectMemberPublic",
    "ProjectPublic", "ProjectRoleGrant", "QuotaLine", "QuotaPublic", "QuotaUpdate",
    "DirectoryGroupCreate", "DirectoryGroupList", "DirectoryGroupPublic", "GroupCreate", "GroupList", "GroupMemberPublic", "GroupProjectRolePublic", "GroupPublic", "GroupRole",
]
