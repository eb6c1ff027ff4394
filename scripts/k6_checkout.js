// Self-checkout workload for k6, the same traffic as locustfiles/checkout.py, for users who
// load-test from outside the cluster: each virtual user is a checkout machine that scans a
// product every 1 to 3 s and POSTs one instance, shaped from the model's metadata.
//
//   k6 run -e BASE_URL=http://model-server.example -e USERS=100 -e DURATION=60s scripts/k6_checkout.js
//
// Thresholds fail the run if any scan fails or the 95th percentile exceeds P95_MS (default 100).
import http from 'k6/http';
import { check, sleep } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';

export const options = {
  scenarios: {
    checkout: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: __ENV.RAMP_UP || '10s', target: Number(__ENV.USERS || 100) },
        { duration: __ENV.DURATION || '60s', target: Number(__ENV.USERS || 100) },
      ],
      gracefulRampDown: '5s',
    },
  },
  thresholds: {
    checks: ['rate==1'],
    'http_req_duration{name:predict}': [`p(95)<${__ENV.P95_MS || 100}`],
  },
};

// One random instance of the model's first input, from GET /v1/models/<name>/metadata.
function sampleInstance(metadata) {
  const inputs = metadata.metadata.signature_def.signature_def.serving_default.inputs;
  const first = Object.values(inputs)[0];
  const dims = first.tensor_shape.dim.slice(1).map((dim) => Math.max(1, Number(dim.size)));
  const integer = !first.dtype.startsWith('DT_FLOAT') && !first.dtype.startsWith('DT_DOUBLE') && !first.dtype.startsWith('DT_HALF');
  const nested = (level) => (level === dims.length
    ? (integer ? Math.floor(Math.random() * 16) : Math.random() * 16)
    : Array.from({ length: dims[level] }, () => nested(level + 1)));
  return nested(0);
}

export function setup() {
  const ready = http.get(`${BASE_URL}/readyz`).json();
  return { model: ready.model, metadata: http.get(`${BASE_URL}/v1/models/${ready.model}/metadata`).json() };
}

export default function (data) {
  sleep(1 + Math.random() * 2);
  const body = JSON.stringify({ instances: [sampleInstance(data.metadata)] });
  const answer = http.post(`${BASE_URL}/v1/models/${data.model}:predict`, body, {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'predict' },
  });
  check(answer, {
    'status 200': (r) => r.status === 200,
    'one prediction': (r) => r.status === 200 && r.json('predictions').length === 1,
  });
}
