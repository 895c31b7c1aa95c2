"""The one error hierarchy of ringkv.

Every error a caller may want to handle derives from `RingkvError` and carries a stable machine-readable
`code` (used as the `error` field of HTTP error bodies) next to its human message.
"""

from __future__ import annotations


class RingkvError(Exception):
    """Base of every ringkv error."""

    code: str = "internal_error"

    def details(self) -> dict[str, object]:
        """Extra machine-readable fields for the error body (e.g. quorum counts)."""
        return {}


class StorageError(RingkvError):
    """The storage engine could not do what was asked."""

    code = "storage_error"


class CorruptionError(StorageError):
    """Bytes on disk failed a checksum or a structural check. Names the file; never returns wrong data."""

    code = "storage_corruption"

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"corrupt data in {path}: {detail}")
        self.path = path
        self.detail = detail


class EngineClosedError(StorageError):
    """The engine was used after `close()`."""

    code = "storage_closed"


class InvalidContextError(RingkvError):
    """A causal context from a client is not one ringkv issued: bad base64, msgpack, shape or size."""

    code = "invalid_context"


class InvalidRecordError(RingkvError):
    """Bytes that should hold a versioned record (stored or replicated) do not; never returns wrong data."""

    code = "invalid_record"


class TooManySiblingsError(RingkvError):
    """A write would leave more concurrent versions of a key than the limit; nothing was written."""

    code = "too_many_siblings"

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(
            f"write would leave {count} concurrent versions of the key (limit {limit}); "
            "read the key and write back with its context to resolve them"
        )
        self.count = count
        self.limit = limit


class RequestError(RingkvError):
    """The client's request is malformed. `code` names what is wrong (e.g. `invalid_json`, `missing_field`)."""

    code = "bad_request"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PayloadTooLargeError(RequestError):
    """The request, or the key plus value it carries, is over its size limit."""


class UnsupportedMediaTypeError(RequestError):
    """The request body is not `application/json`."""


class RequestTimeoutError(RequestError):
    """The request body did not arrive within the limit (a client trickling it in holds a connection)."""

    def __init__(self, message: str) -> None:
        super().__init__("request_timeout", message)


class NotFoundError(RingkvError):
    """The key is absent or deleted."""

    code = "not_found"


class ShuttingDownError(RingkvError):
    """The node is stopping and takes no new work."""

    code = "shutting_down"


class QuorumUnavailableError(RingkvError):
    """Fewer replicas than the quorum answered in time; the request may have reached some of them."""

    code = "quorum_unavailable"

    def __init__(self, required: int, acknowledged: int, what: str = "write") -> None:
        super().__init__(f"{what} quorum not reached: {acknowledged} of the required {required} replicas answered")
        self.required = required
        self.acknowledged = acknowledged

    def details(self) -> dict[str, object]:
        return {"required": self.required, "acknowledged": self.acknowledged}


class HintsFullError(RingkvError):
    """The hint store is at its size limit; the hint was not stored."""

    code = "hints_full"


class NotReadyError(RingkvError):
    """The node has not heard the ring from a peer yet (or is stopping): it coordinates nothing."""

    code = "not_ready"


class NotReplicaError(RingkvError):
    """A forwarded write reached a node that is not a replica of the key in its own view of the ring; nothing
    was applied, so the sender may route it elsewhere."""

    code = "not_replica"


class AntiEntropyUnavailableError(RingkvError):
    """An anti-entropy exchange asked for a tree this node does not have ready (another view of the ring, a
    tree still being built, or anti-entropy off); the asker retries later."""

    code = "aae_unavailable"


class StreamFailedError(RingkvError):
    """A token range could not be streamed in and verified from any of its sources within the attempts allowed
    (every source down, unreachable or failing); what was merged stays merged, and the stream may be retried."""

    code = "stream_failed"
