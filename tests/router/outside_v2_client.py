"""A caller from outside: NVIDIA's tritonclient, a standard V2 / Open Inference client, asks the
router over REST (tritonclient.http) and gRPC (tritonclient.grpc), the way any V2 user would.

Run as its own process (test_standard_clients.py does): tritonclient.grpc and mlserver both
register the V2 protocol's messages (protobuf package `inference`) in protobuf's default pool, so
one process cannot import both. Prints one JSON object: what each transport answered.

    python outside_v2_client.py SELDON_URL GRPC_TARGET NAMESPACE DEPLOYMENT MODEL ROWS_JSON
"""

from __future__ import annotations

import json
import sys
from urllib.parse import urlsplit

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def main() -> None:
    seldon_url, grpc_target, namespace, deployment, model, rows_json = sys.argv[1:7]
    rows = np.asarray(json.loads(rows_json), dtype=np.float64)
    out: dict[str, object] = {}

    url = urlsplit(seldon_url)  # http://host:port/seldon/<namespace>/<deployment>
    rest = httpclient.InferenceServerClient(url=f"{url.netloc}{url.path}")
    rest_input = httpclient.InferInput("input-0", list(rows.shape), "FP64")
    rest_input.set_data_from_numpy(rows, binary_data=False)
    rest_outputs = [httpclient.InferRequestedOutput(n, binary_data=False)
                    for n in ("predict", "predict_proba")]
    answer = rest.infer(model, [rest_input], outputs=rest_outputs)
    out["rest"] = {"ready": rest.is_model_ready(model),
                   "predict": answer.as_numpy("predict").tolist(),
                   "predict_proba": answer.as_numpy("predict_proba").tolist()}
    rest.close()

    headers = {"seldon": deployment, "namespace": namespace}  # sent as gRPC metadata
    g = grpcclient.InferenceServerClient(url=grpc_target)
    grpc_input = grpcclient.InferInput("input-0", list(rows.shape), "FP64")
    grpc_input.set_data_from_numpy(rows)
    grpc_outputs = [grpcclient.InferRequestedOutput(n) for n in ("predict", "predict_proba")]
    answer = g.infer(model, [grpc_input], outputs=grpc_outputs, headers=headers)
    metadata = g.get_model_metadata(model, headers=headers, as_json=True)
    out["grpc"] = {"ready": g.is_model_ready(model, headers=headers),
                   "inputs": [i["name"] for i in metadata["inputs"]],
                   "predict": answer.as_numpy("predict").tolist(),
                   "predict_proba": answer.as_numpy("predict_proba").tolist()}
    g.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
