"""Output folders on a local disk or an object store (``s3://``, ``gs://``, any fsspec URL).

The jobs that write outputs (``olrd``, ``cache-latents``, training checkpoints) go through
:class:`Folder` (:mod:`.folder`), which writes a file so that it appears complete or not at all on
either kind of storage: on a local disk by a temporary sibling and a rename (:mod:`.local`), on an
object store by a single PUT of the final key (:mod:`.object_store`). :mod:`.urls` tells the two
kinds of location apart; :mod:`.options` masks the secrets of ``storage_options`` for the records
a job writes.

Credentials and the endpoint come from the standard places, so nothing in the code changes per
site: the AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ...) that
botocore reads, fsspec's own configuration (``FSSPEC_S3_ENDPOINT_URL``, ``FSSPEC_S3='{...}'``,
files in ``FSSPEC_CONFIG_DIR``), or a ``storage_options`` mapping from the job's config, passed
to fsspec unchanged (e.g. ``{endpoint_url: ..., anon: false}``). Records the jobs write (job.json,
cache.json) hold :func:`public_options`: secrets in ``storage_options`` never land in the output.
"""

from magiceraser.storage.folder import Folder
from magiceraser.storage.object_store import S3_PROTOCOLS
from magiceraser.storage.options import public_options
from magiceraser.storage.urls import is_object_store, protocol

__all__ = ["S3_PROTOCOLS", "Folder", "is_object_store", "protocol", "public_options"]
