"""The one record schema that flows through the pipeline (Arrow), defined once.

A record starts as an *image candidate* (one ``<img>`` on one page, with its alt-text),
is filled in by each stage (alt-text and language checks → fetch → decode → resolution →
moderation → CNN embedding → exact / pHash / CNN dedup: the plan of :mod:`mella.plan`), and ends either as a kept
pair (a row of D_know), a D_ling row (an image whose alt-text was unusable — ``d_ling_reason`` —
captioned and translated) or as a *reject*: the same row plus ``stage``,
``reason`` and ``detail``. Rejects never carry image bytes or embeddings (null there) so the
reject log stays small.

Columns (Arrow type; units):

=================  ====================  ==========================================================
id                 string                sha1 hex of ``lang \\x1f page_url \\x1f image_url``: stable key
lang               string                target language (ISO 639-1, e.g. ``hu``) the pair belongs to
page_url           string                absolute URL of the page the ``<img>`` was found on
image_url          string                absolute URL of the image (``src``/largest ``srcset``/``data-src``)
alt_text           string                whitespace-normalised HTML ``alt`` attribute
page_lang          string                language evidence of the page, e.g. ``html:hu``, ``lid:hu``
width, height      int32                 decoded size in px (first frame for GIF)
format             string                Pillow format name: ``JPEG``, ``PNG``, ``WEBP``, ``GIF``
image              binary                the image file bytes as fetched (null on rejects)
image_bytes        int64                 size of ``image`` in bytes
sha256             string                sha256 hex of the image file bytes
pixel_sha256       string                sha256 hex of the decoded RGB(A) pixels + size (exact-dup key)
lid_lang           string                fastText lid.176 top-1 label of the alt-text
lid_prob           float32               its probability in [0, 1]
source             string                ``crawl`` (live crawl) or ``warc`` (``--warc`` input)
fetched_at         timestamp[ms, UTC]    when the image response was received (WARC-Date on replay)
warc_filename      string                provenance: the WARC file holding the page's response record (file name
                                         of the job's own or a ``--warc`` file; Common Crawl's ``warc_filename``)
warc_record_offset int64                 byte offset of that record in the file (one gzip member in ``.warc.gz``)
warc_record_length int64                 its length in bytes: ``Range: bytes=offset-(offset+length-1)`` reads it
stage              string                rejects only: stage that dropped the row (the stage names of the plan: :func:`mella.plan.stage_names`)
reason             string                rejects only: machine-readable reason, e.g. ``http_404``
detail             string                rejects only: human-readable detail (exception text, ...)
=================  ====================  ==========================================================

Columns added by later stages (null until those stages run) are listed in ``EXTENSION_FIELDS``.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

BASE_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("lang", pa.string()),
    pa.field("page_url", pa.string()),
    pa.field("image_url", pa.string()),
    pa.field("alt_text", pa.string()),
    pa.field("page_lang", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("format", pa.string()),
    pa.field("image", pa.binary()),
    pa.field("image_bytes", pa.int64()),
    pa.field("sha256", pa.string()),
    pa.field("pixel_sha256", pa.string()),
    pa.field("lid_lang", pa.string()),
    pa.field("lid_prob", pa.float32()),
    pa.field("source", pa.string()),
    pa.field("fetched_at", pa.timestamp("ms", tz="UTC")),
    pa.field("warc_filename", pa.string()),  # provenance, as Common Crawl's columnar index names it
    pa.field("warc_record_offset", pa.int64()),
    pa.field("warc_record_length", pa.int64()),
]

#: Filled by later stages (pHash, CNN dedup, moderation, D_ling); null until then (or when disabled).
EXTENSION_FIELDS: list[pa.Field] = [
    pa.field("phash", pa.string()),  # 64-bit pHash as 16 hex chars
    pa.field("embedding", pa.list_(pa.float32())),  # EfficientNet-lite0 pooled features, 1280 floats, L2-normalised
    pa.field("nsfw_score", pa.float32()),  # open_nsfw P(nsfw) in [0, 1]
    pa.field("moderation_scores", pa.string()),  # moderation API: JSON {category: score}
    pa.field(
        "d_ling_reason", pa.string()
    ),  # why the image went to D_ling (its alt-text's reject), e.g. alt_text:alt_empty
    pa.field("category", pa.string()),
    pa.field("category_major", pa.string()),
    pa.field("caption_en", pa.string()),
    pa.field("text", pa.string()),
    pa.field("mt_backend", pa.string()),
    pa.field("qe_score", pa.float32()),
]

REJECT_FIELDS: list[pa.Field] = [
    pa.field("stage", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
]

#: Schema of a kept image-text pair (D_know rows; D_ling adds values in EXTENSION_FIELDS).
RECORD_SCHEMA = pa.schema(BASE_FIELDS + EXTENSION_FIELDS)
#: Schema of a reject: the record plus stage/reason/detail; ``image`` is always null.
REJECT_SCHEMA = pa.schema(BASE_FIELDS + EXTENSION_FIELDS + REJECT_FIELDS)

#: Large columns a stage that only reads metadata never needs as Python objects (bytes, 1280 floats).
HEAVY_COLUMNS = ("image", "embedding")

RECORD_COLUMNS: list[str] = RECORD_SCHEMA.names
REJECT_COLUMNS: list[str] = REJECT_SCHEMA.names


def record_id(lang: str | None, page_url: str | None, image_url: str | None) -> str:
    """Stable row key: sha1 hex (40 chars) of ``lang``, ``page_url`` and ``image_url``."""
    key = "\x1f".join((lang or "", page_url or "", image_url or ""))
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def to_table(rows: list[dict], schema: pa.Schema = RECORD_SCHEMA) -> pa.Table:
    """Build a table with exactly ``schema``'s columns from dict rows (missing keys → null)."""
    cols = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.Table.from_pydict(cols, schema=schema)


def conform(table: pa.Table, schema: pa.Schema = RECORD_SCHEMA) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order; missing ones filled with null.

    Raises:
        pyarrow.ArrowInvalid: a present column cannot be cast to the schema's type.
    """
    n = table.num_rows
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            arrays.append(col if col.type == field.type else col.cast(field.type))
        else:
            arrays.append(pa.nulls(n, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
