from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Modality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODALITY_UNSPECIFIED: _ClassVar[Modality]
    FACE: _ClassVar[Modality]
    VOICE: _ClassVar[Modality]

class Space(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPACE_UNSPECIFIED: _ClassVar[Space]
    ASSOCIATION: _ClassVar[Space]
    FACE_FEATURE: _ClassVar[Space]
MODALITY_UNSPECIFIED: Modality
FACE: Modality
VOICE: Modality
SPACE_UNSPECIFIED: Space
ASSOCIATION: Space
FACE_FEATURE: Space

class Audio(_message.Message):
    __slots__ = ("data", "format")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    format: str
    def __init__(self, data: _Optional[bytes] = ..., format: _Optional[str] = ...) -> None: ...

class FaceBox(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    width: float
    height: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., width: _Optional[float] = ..., height: _Optional[float] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("data", "format", "box", "face_index")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    format: str
    box: FaceBox
    face_index: int
    def __init__(self, data: _Optional[bytes] = ..., format: _Optional[str] = ..., box: _Optional[_Union[FaceBox, _Mapping]] = ..., face_index: _Optional[int] = ...) -> None: ...

class FaceUsed(_message.Message):
    __slots__ = ("box", "score", "source", "faces")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    box: FaceBox
    score: float
    source: str
    faces: _containers.RepeatedCompositeFieldContainer[FaceBox]
    def __init__(self, box: _Optional[_Union[FaceBox, _Mapping]] = ..., score: _Optional[float] = ..., source: _Optional[str] = ..., faces: _Optional[_Iterable[_Union[FaceBox, _Mapping]]] = ...) -> None: ...

class Media(_message.Message):
    __slots__ = ("audio", "image")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    image: Image
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class AttributeFilter(_message.Message):
    __slots__ = ("name", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchFacesRequest(_message.Message):
    __slots__ = ("voice", "top_k", "filters")
    VOICE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    voice: Audio
    top_k: int
    filters: _containers.RepeatedCompositeFieldContainer[AttributeFilter]
    def __init__(self, voice: _Optional[_Union[Audio, _Mapping]] = ..., top_k: _Optional[int] = ..., filters: _Optional[_Iterable[_Union[AttributeFilter, _Mapping]]] = ...) -> None: ...

class SearchVoicesRequest(_message.Message):
    __slots__ = ("face", "top_k", "filters")
    FACE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    face: Image
    top_k: int
    filters: _containers.RepeatedCompositeFieldContainer[AttributeFilter]
    def __init__(self, face: _Optional[_Union[Image, _Mapping]] = ..., top_k: _Optional[int] = ..., filters: _Optional[_Iterable[_Union[AttributeFilter, _Mapping]]] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("item_id", "identity", "score", "distance", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    identity: str
    score: float
    distance: float
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, item_id: _Optional[str] = ..., identity: _Optional[str] = ..., score: _Optional[float] = ..., distance: _Optional[float] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "model_version", "index_version", "cached", "query_face")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    QUERY_FACE_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    model_version: str
    index_version: str
    cached: bool
    query_face: FaceUsed
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., model_version: _Optional[str] = ..., index_version: _Optional[str] = ..., cached: _Optional[bool] = ..., query_face: _Optional[_Union[FaceUsed, _Mapping]] = ...) -> None: ...

class MatchRequest(_message.Message):
    __slots__ = ("probe", "candidates")
    PROBE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    probe: Media
    candidates: _containers.RepeatedCompositeFieldContainer[Media]
    def __init__(self, probe: _Optional[_Union[Media, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Media, _Mapping]]] = ...) -> None: ...

class RankedCandidate(_message.Message):
    __slots__ = ("index", "score", "distance")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    distance: float
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ..., distance: _Optional[float] = ...) -> None: ...

class MatchResponse(_message.Message):
    __slots__ = ("ranking", "model_version", "faces")
    RANKING_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    ranking: _containers.RepeatedCompositeFieldContainer[RankedCandidate]
    model_version: str
    faces: _containers.RepeatedCompositeFieldContainer[FaceUsed]
    def __init__(self, ranking: _Optional[_Iterable[_Union[RankedCandidate, _Mapping]]] = ..., model_version: _Optional[str] = ..., faces: _Optional[_Iterable[_Union[FaceUsed, _Mapping]]] = ...) -> None: ...

class ReconstructFaceRequest(_message.Message):
    __slots__ = ("voice", "top_k")
    VOICE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    voice: Audio
    top_k: int
    def __init__(self, voice: _Optional[_Union[Audio, _Mapping]] = ..., top_k: _Optional[int] = ...) -> None: ...

class ReconstructFaceResponse(_message.Message):
    __slots__ = ("png", "nearest", "model_version", "index_version")
    PNG_FIELD_NUMBER: _ClassVar[int]
    NEAREST_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    nearest: _containers.RepeatedCompositeFieldContainer[Hit]
    model_version: str
    index_version: str
    def __init__(self, png: _Optional[bytes] = ..., nearest: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., model_version: _Optional[str] = ..., index_version: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("media", "space")
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    media: Media
    space: Space
    def __init__(self, media: _Optional[_Union[Media, _Mapping]] = ..., space: _Optional[_Union[Space, str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embedding", "model_version", "face")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    face: FaceUsed
    def __init__(self, embedding: _Optional[_Iterable[float]] = ..., model_version: _Optional[str] = ..., face: _Optional[_Union[FaceUsed, _Mapping]] = ...) -> None: ...

class GalleryItem(_message.Message):
    __slots__ = ("item_id", "identity", "media", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    identity: str
    media: Media
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, item_id: _Optional[str] = ..., identity: _Optional[str] = ..., media: _Optional[_Union[Media, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[GalleryItem]
    def __init__(self, items: _Optional[_Iterable[_Union[GalleryItem, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("upserted", "index_size")
    class IndexSizeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    INDEX_SIZE_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    index_size: _containers.ScalarMap[str, int]
    def __init__(self, upserted: _Optional[int] = ..., index_size: _Optional[_Mapping[str, int]] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("modality", "item_ids")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    modality: Modality
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, modality: _Optional[_Union[Modality, str]] = ..., item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("deleted", "not_found")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    not_found: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[int] = ..., not_found: _Optional[_Iterable[str]] = ...) -> None: ...

class GetIndexInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IndexInfo(_message.Message):
    __slots__ = ("name", "version", "model_version", "size", "kind", "params", "recall_at_10", "built_at", "device", "plan", "factory", "bytes_per_item", "min_recall", "memory_budget", "mapped", "placement")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    RECALL_AT_10_FIELD_NUMBER: _ClassVar[int]
    BUILT_AT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_ITEM_FIELD_NUMBER: _ClassVar[int]
    MIN_RECALL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    MAPPED_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    model_version: str
    size: int
    kind: str
    params: _containers.ScalarMap[str, str]
    recall_at_10: float
    built_at: str
    device: str
    plan: str
    factory: str
    bytes_per_item: float
    min_recall: float
    memory_budget: int
    mapped: bool
    placement: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., model_version: _Optional[str] = ..., size: _Optional[int] = ..., kind: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., recall_at_10: _Optional[float] = ..., built_at: _Optional[str] = ..., device: _Optional[str] = ..., plan: _Optional[str] = ..., factory: _Optional[str] = ..., bytes_per_item: _Optional[float] = ..., min_recall: _Optional[float] = ..., memory_budget: _Optional[int] = ..., mapped: _Optional[bool] = ..., placement: _Optional[str] = ...) -> None: ...

class GetIndexInfoResponse(_message.Message):
    __slots__ = ("indexes", "association_model_version", "speech2face_model_version", "frontends", "log")
    class FrontendsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    ASSOCIATION_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEECH2FACE_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRONTENDS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    indexes: _containers.RepeatedCompositeFieldContainer[IndexInfo]
    association_model_version: str
    speech2face_model_version: str
    frontends: _containers.ScalarMap[str, str]
    log: GalleryLogStatus
    def __init__(self, indexes: _Optional[_Iterable[_Union[IndexInfo, _Mapping]]] = ..., association_model_version: _Optional[str] = ..., speech2face_model_version: _Optional[str] = ..., frontends: _Optional[_Mapping[str, str]] = ..., log: _Optional[_Union[GalleryLogStatus, _Mapping]] = ...) -> None: ...

class GalleryLogStatus(_message.Message):
    __slots__ = ("kind", "state", "applied", "head", "lag_entries", "lag_seconds", "writes", "error")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    LAG_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    kind: str
    state: str
    applied: str
    head: str
    lag_entries: int
    lag_seconds: float
    writes: bool
    error: str
    def __init__(self, kind: _Optional[str] = ..., state: _Optional[str] = ..., applied: _Optional[str] = ..., head: _Optional[str] = ..., lag_entries: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., writes: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...
