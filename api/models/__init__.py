"""Database models (SQLAlchemy 2, typed), one module per domain; API schemas live in ``schemas/``.

Every tenant-owned row carries ``org_id``, and ``project_id`` through ``ProjectOwned``; queries
filter on them (``services/crud.py``).
Importing this package registers every table on ``Base.metadata``, which the migrations
describe; the names below are the package's whole surface.
"""

from cloudland_api.models.audit import AuditEvent
from cloudland_api.models.base import Base, UTCDateTime, utcnow
from cloudland_api.models.compute import Flavor, Instance, SshKey
from cloudland_api.models.groups import DirectoryGroup, Group, GroupMember, GroupProjectRole
from cloudland_api.models.hypervisors import Hypervisor
from cloudland_api.models.identity import AppCredential, Directory, LoginFailure, Membership, Organisation, RevokedToken, Role, User
from cloudland_api.models.images import Image
from cloudland_api.models.jobs import HYPERVISOR, IMAGE, INSTANCE, TERMINAL, VOLUME, VPC, Job, JobState
from cloudland_api.models.projects import DEFAULT_PROJECT, OrganisationQuota, Project, ProjectOwned, ProjectQuota, ProjectRole
from cloudland_api.models.networks import Port, PortIp, Subnet, Vpc
from cloudland_api.models.routers import ExternalIp, ExternalNetwork, Router, RouterSubnet
from cloudland_api.models.secgroups import DEFAULT_GROUP, PortAllowedAddress, PortSecurityGroup, SecurityGroup, SecurityRule
from cloudland_api.models.volumes import Volume, VolumeAttachment, VolumeSnapshot

__all__ = [
    "DEFAULT_GROUP", "DEFAULT_PROJECT", "HYPERVISOR", "IMAGE", "INSTANCE", "TERMINAL", "AppCredential", "AuditEvent",
    "Base", "Directory", "DirectoryGroup", "ExternalIp", "ExternalNetwork", "Flavor", "Group", "GroupMember", "GroupProjectRole",
    "Hypervisor", "Image", "Instance", "Job", "JobState",
    "LoginFailure", "Membership", "Organisation", "OrganisationQuota", "Port", "PortAllowedAddress", "PortIp",
    "PortSecurityGroup", "Project", "ProjectOwned", "ProjectQuota", "ProjectRole", "RevokedToken", "Role", "Router",
    "RouterSubnet", "SecurityGroup", "SecurityRule", "SshKey", "Subnet", "User", "UTCDateTime", "VOLUME", "VPC",
    "Volume", "VolumeAttachment", "VolumeSnapshot", "Vpc",
    "utcnow",
]
