"""Tables. Datetimes are timezone-aware UTC; money is Numeric and Decimal.

Changing a model means a new Alembic revision (autogenerate, then review); `alembic check`
runs in the tests so the two cannot drift.

One module per area; every table is importable from here.
"""

from proxy.db.models.base import Base, Money, UTCDateTime, utcnow
from proxy.db.models.billing import BilledCost, BillingKey, BillingLease, Reconciliation
from proxy.db.models.budgets import Alert, Budget
from proxy.db.models.collection import (
    CodeInterpreterCall,
    CollectionJob,
    ResponseContainer,
    RunIntent,
    ThreadSession,
)
from proxy.db.models.mappings import (
    AssistantName,
    AuditEntry,
    KeyTeam,
    MappingVersion,
    ProjectTeam,
    ProxySecret,
)
from proxy.db.models.usage import UsageRecord, UsageRollup, UsageRollupMonth

__all__ = [
    "Alert",
    "AssistantName",
    "AuditEntry",
    "Base",
    "BilledCost",
    "BillingKey",
    "BillingLease",
    "Budget",
    "CodeInterpreterCall",
    "CollectionJob",
    "KeyTeam",
    "MappingVersion",
    "Money",
    "ProjectTeam",
    "ProxySecret",
    "Reconciliation",
    "ResponseContainer",
    "RunIntent",
    "ThreadSession",
    "UTCDateTime",
    "UsageRecord",
    "UsageRollup",
    "UsageRollupMonth",
    "utcnow",
]
