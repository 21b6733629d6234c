"""The few MLflow calls the sender makes, with this tracker's own HTTP timeout.

MLflow reads its HTTP timeout and retries (120 s, 7 retries with backoff) from
process-wide MLFLOW_HTTP_REQUEST_* variables. Setting them would change every other
MLflow user in the process, and MLflow's own retries would hide an outage from the
sender for minutes. So tracking requests to a server go through a RestStore that sends
each request once with `http_timeout_s`; the sender does the retrying. Artifact uploads
use MLflow's artifact client and so its settings (MLFLOW_HTTP_REQUEST_* in the job's
environment, if the user sets them).
"""
from __future__ import annotations

import getpass
import json
import time
from functools import partial


def _rest_store(uri: str, timeout_s: float):
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.proto_json_utils import parse_dict
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    class OneShotRestStore(RestStore):
        def _call_endpoint(self, api, json_body=None, endpoint=None, retry_timeout_seconds=None,
                           response_proto=None):
            info = self._V3_METHOD_TO_INFO if api in self._V3_APIS else self._METHOD_TO_INFO
            default_endpoint, method = info[api]
            endpoint = endpoint or default_endpoint
            body = json.loads(json_body) if json_body is not None else None
            response = http_request(self.get_host_creds(), endpoint, method, max_retries=0, backoff_factor=0,
                                    timeout=timeout_s, **({"params": body} if method == "GET" else {"json": body}))
            response = verify_rest_response(response, endpoint)
            proto = response_proto or api.Response()
            if response.status_code != 204:
                parse_dict(js_dict=json.loads(response.text), message=proto)
            return proto

    return OneShotRestStore(partial(get_default_host_creds, uri))


class MlflowBackend:
    def __init__(self, uri: str, http_timeout_s: float):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)  # artifacts; and the store for sqlite/file URIs
        http = uri.startswith(("http://", "https://"))
        self.store = _rest_store(uri, http_timeout_s) if http else self.client._tracking_client.store

    def experiment_id(self, name: str, artifact_location: str | None, tags: dict[str, str]) -> str:
        """The experiment's id, created with `tags` if new; an existing experiment (an older
        store) keeps its artifact location and gets only the tags it lacks."""
        from mlflow.entities import ExperimentTag

        exp = self.store.get_experiment_by_name(name)
        if exp is None:
            return self.store.create_experiment(name, artifact_location=artifact_location,
                                                tags=[ExperimentTag(k, v) for k, v in tags.items()])
        for k, v in tags.items():
            if k not in exp.tags:
                self.store.set_experiment_tag(exp.experiment_id, ExperimentTag(k, v))
        return exp.experiment_id

    def create_run(self, experiment_id: str, run_name: str | None) -> str:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        run = self.store.create_run(experiment_id=experiment_id, user_id=user, start_time=int(time.time() * 1000),
                                    tags=[], run_name=run_name)
        return run.info.run_id

    def set_status(self, run_id: str, status: str) -> None:
        from mlflow.entities import RunStatus

        end = None if status == "RUNNING" else int(time.time() * 1000)
        self.store.update_run_info(run_id, RunStatus.from_string(status), end, None)

    def log_metrics(self, run_id: str, metrics: list) -> None:
        from mlflow.entities import Metric

        self.store.log_batch(run_id, metrics=[Metric(*m) for m in metrics], params=[], tags=[])

    def log_params(self, run_id: str, params: list[tuple[str, str]]) -> None:
        from mlflow.entities import Param

        self.store.log_batch(run_id, metrics=[], params=[Param(k, v) for k, v in params], tags=[])

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        from mlflow.entities import RunTag

        self.store.set_tag(run_id, RunTag(key, value))

    def log_inputs(self, run_id: str, datasets: list[dict]) -> None:
        """datasets as made by datasets.source_datasets; the role becomes the input's context."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        self.store.log_inputs(run_id, datasets=[
            DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"], profile=d["profile"]),
                         tags=[InputTag(MLFLOW_DATASET_CONTEXT, d["role"])]) for d in datasets])

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None) -> None:
        self.client.log_artifact(run_id, path, artifact_path)
