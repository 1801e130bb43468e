// The parsers of what reaches the agent from outside (config and baseline
// files, API query parameters) live in ConnGuardAgentInput, which needs only
// ConnGuardCore and Yams, so the fuzz targets (Fuzz/) can build them with the
// sanitizers without building NIO, Hummingbird and GRDB too. Re-exported so
// that this module and its users see them as before.
@_exported import ConnGuardAgentInput
