// Every file of the supervisor sees the system helpers (StepFailure, errnoString, Clock, Files)
// and the sandbox's facilities (Plan, Mounts, CgroupTree, NetnsPool, Workspace) without an import
// of its own.
@_exported import ClawpenSandbox
@_exported import ClawpenSystem
