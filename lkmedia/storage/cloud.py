"""The providers beyond S3, loaded when a configuration names one: each needs its
provider's library, an optional extra (``pip install 'lkmedia[gcp]'``, ``[azure]``,
``[oss]``), so a config that names a provider whose extra is missing fails at start-up
with the pip command to run, instead of recording for an hour and failing at the upload."""
from __future__ import annotations

import importlib
from typing import Any

from .base import Storage, StorageConfigError

#: provider -> (module, class, extra, the provider's name, top-level packages the extra installs)
PROVIDERS: dict[str, tuple[str, str, str, str, tuple[str, ...]]] = {
    "gcp": ("lkmedia.storage.gcp", "GCPStorage", "gcp", "Google Cloud Storage", ("gcloud",)),
    "azure": ("lkmedia.storage.azure", "AzureStorage", "azure", "Azure Blob Storage", ("azure",)),
    "alioss": ("lkmedia.storage.alioss", "AliOSSStorage", "oss", "Alibaba Cloud OSS", ("alibabacloud_oss_v2",)),
}


def provider_class(provider: str, where: str | None = None) -> type[Storage]:
    """The Storage class of ``provider`` ("gcp", "azure", "alioss"), or StorageConfigError
    naming the extra to install."""
    module, cls, extra, title, packages = PROVIDERS[provider]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        missing = (e.name or "").split(".", 1)[0]
        if missing not in packages:
            raise
        raise StorageConfigError(
            f"{where or provider}: {title} uploads need lkmedia's [{extra}] extra, which is not installed "
            f"({e.name} is missing): pip install 'lkmedia[{extra}]'") from None
    klass: type[Storage] = getattr(mod, cls)
    return klass


def make_storage(provider: str, config: Any, *, prefix: str = "", presign: bool = False,
                 where: str | None = None) -> Storage:
    """A storage of ``provider`` for its parsed ``config`` (cloud_config.GCPConfig, ...)."""
    klass: Any = provider_class(provider, where)
    storage: Storage = klass(config, prefix=prefix, presign=presign)
    return storage


def __getattr__(name: str) -> type[Storage]:
    for provider, (_, cls, *_rest) in PROVIDERS.items():
        if cls == name:
            return provider_class(provider)
    raise AttributeError(name)
