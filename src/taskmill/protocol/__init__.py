"""Typed records (msgspec Structs) of every message between clients, the controller and
engines, of the result metadata the controller keeps, and of its statistics.

    requests.py  client -> controller: a record a verb (Submit, Lease, Tids, ...); the client
                 builds each header from its record (`to_request`), the controller reads it
                 back (`client_record`) and checks what a type cannot say (`node_rules`)
    replies.py   controller -> client: a record a reply shape and the `done` message; the
                 controller builds each (`to_client`, via Outbox.reply), the client reads it
                 back (`from_reply`, `from_done`), refusing one that does not fit
    engine.py    the engine protocol, both ways (`to_controller`/`engine_record`,
                 `to_engine`/`from_controller`; `result_entry`)
    results.py   ResultMeta and ErrorInfo (what a finished task stores), Outcome (one task's
                 entry as a client receives it)
    views.py     the controller's read-only views: QueueStatus, EngineRow, TaskInfo (by its
                 state), ActivitySnapshot, Statistics; each built as its record where it is
                 made, sent as plain maps (`as_map`), read back into it by the client
    common.py    the number types, ProtocolError, `fit` (a header into its record)

Every side that receives a message converts it into its record (msgspec `convert`: every
field's type and range checked while the record is built) before anything reads it; a
sender builds its record from the plain values it has (msgspec does not check on
construction, so the hot paths copy nothing). Every name is importable from here. This
package imports nothing of taskmill but `task.MAX_TIMEOUT`.
"""

from .common import MAX_TIMEOUT, NonNeg, ProtocolError, Timeout, fit
from .engine import (
    ENGINE_RECORDS,
    TO_ENGINE_RECORDS,
    HbAnswer,
    Heartbeat,
    InterruptTask,
    Leaving,
    Register,
    Registered,
    Reregister,
    ResultEntry,
    Results,
    Retired,
    Revoked,
    RevokeTask,
    Stored,
    Tasks,
    Welcome,
    engine_record,
    from_controller,
    result_entry,
    to_controller,
    to_engine,
)
from .replies import (
    REPLY_RECORDS,
    AbortReply,
    ActivityReply,
    ClearReply,
    Done,
    EmptyReply,
    EnginesReply,
    HelloReply,
    LeaseReply,
    PingReply,
    Refusal,
    ResultsReply,
    RetireReply,
    SpinReply,
    StatsReply,
    StatusReply,
    TaskReply,
    TidsReply,
    from_done,
    from_reply,
    to_client,
)
from .requests import (
    CLIENT_RECORDS,
    REQUEST_TYPES,
    Abort,
    Ack,
    Activity,
    Bye,
    Clear,
    EngineExited,
    EnginesQuery,
    Hello,
    Lease,
    MapExec,
    NodeSpec,
    NoFields,
    Ping,
    Put,
    Release,
    ResultQuery,
    Retire,
    Spin,
    StatsQuery,
    Status,
    StringExec,
    Submit,
    TaskQuery,
    TaskSpec,
    Tids,
    Wait,
    Watch,
    client_record,
    node_rules,
    to_request,
)
from .results import ErrorInfo, Outcome, ResultMeta
from .views import (
    ActivitySnapshot,
    AttemptRow,
    Durations,
    EngineRow,
    EngineStats,
    FailureRow,
    QueueStatus,
    Statistics,
    StoryEntry,
    TaskFailed,
    TaskInfo,
    TaskPending,
    TaskScheduled,
    TaskSucceeded,
    TaskUnknown,
    TaskView,
)

__all__ = [
    "CLIENT_RECORDS", "ENGINE_RECORDS", "MAX_TIMEOUT", "REPLY_RECORDS", "REQUEST_TYPES",
    "TO_ENGINE_RECORDS", "Abort", "AbortReply", "Ack", "Bye", "Activity", "ActivityReply",
    "ActivitySnapshot", "AttemptRow", "Clear", "ClearReply", "Done", "Durations", "EmptyReply",
    "EngineExited", "EngineRow", "EngineStats", "EnginesQuery", "EnginesReply", "FailureRow",
    "ErrorInfo", "HbAnswer", "Heartbeat", "Hello", "HelloReply", "InterruptTask", "Lease",
    "LeaseReply", "MapExec", "NoFields", "NodeSpec", "NonNeg", "Outcome", "Ping", "PingReply",
    "ProtocolError", "Put", "QueueStatus", "Refusal", "Register", "Registered", "Release",
    "Reregister", "ResultEntry", "ResultMeta", "ResultQuery", "Results", "ResultsReply", "Retire",
    "Leaving", "RetireReply", "Retired", "RevokeTask", "Revoked", "Spin", "SpinReply", "Statistics", "Stored",
    "StatsQuery", "StatsReply", "Status", "StatusReply", "StoryEntry", "StringExec", "Submit",
    "TaskFailed", "TaskInfo", "TaskPending", "TaskQuery", "TaskReply", "TaskScheduled", "TaskSpec",
    "TaskSucceeded", "TaskUnknown", "TaskView", "Tasks", "Tids", "TidsReply", "Timeout", "Wait",
    "Watch", "Welcome", "client_record", "engine_record", "fit", "from_controller", "from_done",
    "from_reply", "node_rules", "result_entry", "to_client", "to_controller", "to_engine",
    "to_request",
]
