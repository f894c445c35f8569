"""Storage configuration for GCS, Azure Blob and Alibaba OSS: the Go keys, lkmedia's own,
the request messages, LiveKit's locations, and a missing extra named at start-up."""
from __future__ import annotations

import builtins
import json
import sys
from typing import Any

import pytest
from livekit.protocol import egress as lk

from lkmedia.storage import (
    AliOSSConfig,
    AzureConfig,
    GCPConfig,
    StorageConfigError,
    settings_from_yaml,
    storage_for_request,
)
from lkmedia.storage.cloud import provider_class

KEY = {"type": "service_account", "client_email": "a@b.iam.gserviceaccount.com",
       "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}


def test_locations_follow_livekit() -> None:
    gcp = settings_from_yaml({"storage": {"gcp": {"bucket": "mybucket"}}}).default_storage()
    assert gcp is not None and gcp.location("café/my file.mp4") == \
        "https://mybucket.storage.googleapis.com/caf%C3%A9/my%20file.mp4"
    az = settings_from_yaml({"storage": {"azure": {"account_name": "acct", "account_key": "a2V5",
                                                   "container_name": "/mycontainer/"}}}).default_storage()
    assert az is not None and az.location("a/b/c.mp4") == "https://acct.blob.core.windows.net/mycontainer/a/b/c.mp4"
    for endpoint in ("oss-cn-hangzhou.aliyuncs.com", "https://oss-cn-hangzhou.aliyuncs.com"):
        oss = settings_from_yaml({"alioss": {"access_key": "ak", "secret": "sk", "endpoint": endpoint,
                                             "bucket": "mybucket"}}).default_storage()
        assert oss is not None and oss.location("/foo.mp4") == "https://mybucket.oss-cn-hangzhou.aliyuncs.com/foo.mp4"
        assert oss.region == "cn-hangzhou"  # type: ignore[attr-defined]


def test_yaml_keys_defaults_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_from_yaml({"storage": {"prefix": "rec", "generate_presigned_url": True,
                                        "gcp": {"bucket": "b", "credentials_json": json.dumps(KEY),
                                                "proxy_config": {"url": "http://proxy:3128", "username": "u",
                                                                 "password": "p@ss"},
                                                "max_retries": 0, "max_retry_delay": "2s"}},
                            "backup": {"azure": {"account_name": "acct", "account_key": "a2V5",
                                                 "container_name": "backup"}}})
    assert s.provider == "gcp" and s.presign and s.prefix == "rec"
    assert s.cloud.max_retries == 5 and s.cloud.max_retry_delay == 2.0  # zero means the default, as Go
    assert s.cloud.proxy() == "http://u:p%40ss@proxy:3128"
    assert "p@ss" not in repr(s.cloud) and "PRIVATE" not in repr(s.cloud)
    assert s.backup is not None and s.backup.kind == "azure"
    with pytest.raises(StorageConfigError, match="storage.gcp.bucket_name: unknown gcp key"):
        settings_from_yaml({"storage": {"gcp": {"bucket_name": "b"}}})
    with pytest.raises(StorageConfigError, match="storage.alioss: region or endpoint is required"):
        settings_from_yaml({"storage": {"alioss": {"access_key": "a", "secret": "s", "bucket": "b"}}})
    with pytest.raises(StorageConfigError, match="storage.gcp: credentials_json is not valid JSON"):
        settings_from_yaml({"storage": {"gcp": {"bucket": "b", "credentials_json": "{oops"}}})
    with pytest.raises(StorageConfigError, match="only one of"):
        settings_from_yaml({"storage": {"gcp": {"bucket": "b"}, "azure": {"account_name": "x"}}})
    # the standard variables
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "envacct")
    monkeypatch.setenv("AZURE_STORAGE_KEY", "ZW52a2V5")
    az = settings_from_yaml({"storage": {"azure": {"container_name": "c"}}})
    assert az.cloud.account_name == "envacct" and az.cloud.account_key == "ZW52a2V5"
    with pytest.raises(StorageConfigError, match="storage.azure: account_name is required"):
        monkeypatch.delenv("AZURE_STORAGE_ACCOUNT")
        settings_from_yaml({"storage": {"azure": {"container_name": "c"}}})


def test_credentials_file_and_emulator_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    path = tmp_path / "key.json"
    path.write_text(json.dumps(KEY))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    assert GCPConfig(bucket="b").credentials() == KEY
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")
    gcs: Any = settings_from_yaml({"gcp": {"bucket": "b"}}).default_storage()
    assert gcs.api_root == "http://127.0.0.1:4443" and gcs.emulated
    assert gcs.location("x.mp4") == "http://127.0.0.1:4443/b/x.mp4"
    # lkmedia's endpoint wins over the variable; without a scheme it is https (a real API: a token)
    gcs = settings_from_yaml({"gcp": {"bucket": "b", "endpoint": "storage.example.eu"}}).default_storage()
    assert gcs.api_root == "https://storage.example.eu" and not gcs.emulated
    path.write_text("{}")
    with pytest.raises(StorageConfigError, match="GOOGLE_APPLICATION_CREDENTIALS is not a Google credentials"):
        GCPConfig(bucket="b").validate()


def test_request_messages_keep_the_servers_endpoint_and_retries() -> None:
    s = settings_from_yaml({"storage": {"prefix": "p", "azure": {
        "account_name": "acct", "account_key": "a2V5", "container_name": "c", "endpoint": "http://127.0.0.1:1/acct",
        "max_retries": 2}}})
    st: Any = storage_for_request(lk.AzureBlobUpload(account_name="acct", account_key="b3RoZXI=",
                                                     container_name="other"), s)
    assert isinstance(st.config, AzureConfig) and st.config.container_name == "other"
    assert st.config.endpoint == "http://127.0.0.1:1/acct" and st.config.max_retries == 2 and st.prefix == "p"
    st = storage_for_request(lk.EncodedFileOutput(aliOSS=lk.AliOSSUpload(
        access_key="ak", secret="sk", region="oss-cn-beijing", bucket="b")).aliOSS, s)
    assert isinstance(st.config, AliOSSConfig) and st.region == "cn-beijing"
    assert st.location("k.mp4") == "https://b.oss-cn-beijing.aliyuncs.com/k.mp4"
    st = storage_for_request(lk.GCPUpload(bucket="g", credentials=json.dumps(KEY)), s)
    assert st.kind == "gcp" and st.config.bucket == "g"


@pytest.mark.parametrize(("provider", "section", "request_msg"), [
    ("gcp", {"bucket": "b", "credentials_json": json.dumps(KEY)}, lk.GCPUpload(bucket="g", credentials=json.dumps(KEY))),
    ("azure", {"account_name": "acct", "account_key": "a2V5", "container_name": "c"},
     lk.AzureBlobUpload(account_name="acct", account_key="b3RoZXI=", container_name="o")),
    ("alioss", {"access_key": "a", "secret": "s", "bucket": "b", "region": "cn-hangzhou"},
     lk.AliOSSUpload(access_key="ak", secret="sk", region="oss-cn-beijing", bucket="o")),
])
def test_part_size_and_multipart_threshold_reach_every_provider(provider: str, section: dict[str, Any],
                                                                request_msg: Any) -> None:
    """S3's transfer keys, read in each provider's section: the server's storage and a
    request's own upload (which takes them from the server's section) use them."""
    mib = 1 << 20
    s = settings_from_yaml({"storage": {provider: {**section, "part_size": 6 * mib, "multipart_threshold": 7 * mib}}})
    for st in (s.default_storage(), storage_for_request(request_msg, s)):
        assert st is not None and st.kind == provider
        assert (st.part_size, st.multipart_threshold) == (6 * mib, 7 * mib)  # type: ignore[attr-defined]
    with pytest.raises(StorageConfigError, match="part_size must be at least 5 MiB"):
        settings_from_yaml({"storage": {provider: {**section, "part_size": mib}}})


def test_a_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_azure(name: str, *args: Any, **kw: Any) -> Any:
        if name.startswith("azure"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kw)

    monkeypatch.delitem(sys.modules, "lkmedia.storage.azure", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_azure)
    with pytest.raises(StorageConfigError) as ei:
        settings_from_yaml({"storage": {"azure": {"account_name": "a", "account_key": "a2V5", "container_name": "c"}}})
    assert str(ei.value).startswith("storage.azure: Azure Blob Storage uploads need lkmedia's [azure] extra")
    assert "pip install 'lkmedia[azure]'" in str(ei.value)
    with pytest.raises(StorageConfigError, match="pip install 'lkmedia.azure.'"):
        provider_class("azure")
    # the egress service stops at start-up (the CLI prints it as "lkmedia: error: ...")
    from lkmedia.egress.kind import EgressKind
    from lkmedia.service.config import parse_config

    conf = parse_config("api_key: k\napi_secret: s\nws_url: ws://127.0.0.1:7880\nredis: {address: 127.0.0.1:6379}\n"
                        "storage:\n  azure: {account_name: a, account_key: a2V5, container_name: c}\n")
    with pytest.raises(StorageConfigError, match=r"storage.azure: .* pip install 'lkmedia\[azure\]'"):
        EgressKind(conf, "/tmp/lkm-unused")
