// The project's load test: from VUS virtual users for DURATION, calc's sum (POST
// {"numbers": [1, 2, 3, 4]} to ${CALC_URL}/sum), or any one request (REQUEST_METHOD and
// REQUEST_PATH), each with a unique id that calc logs with its operation, so the lab can
// match every request to its operation. A script of your own meets the same contract:
// see src/lab/README.md, "Load: the request and your own k6 script".
//
// Environment (k6 -e NAME=value or the process environment):
//   CALC_URL    base URL, the Service's entry (default http://127.0.0.1:4000)
//   VUS         virtual users (default 500, as in the talk)
//   DURATION    test length, a k6 duration (default 5m)
//   REQUEST_METHOD, REQUEST_PATH
//               the request instead of calc's sum (e.g. GET and /health); with them, only
//               REQUEST_HEADERS and a body are sent, nothing of the sum's
//   REQUEST_HEADERS
//               a JSON object of header name to value
//   REQUEST_BODY the body as text, or REQUEST_BODY_FILE: a file's bytes (absolute path)
//   EXPECT_STATUS
//               the status that passes the check (default 200)
//   CONN_REUSE  1 keeps connections alive; default: a new connection per request, as the
//               talk ran it, so every request meets the load balancer's current backends
//   INSECURE    1 skips TLS verification (self-signed certificates)
//   RUN_ID      prefix of the request ids (default: the start time in ms)
//   TIMEOUT     per-request timeout, a k6 duration (default 60s, k6's own default)
//   H2          0 skips the HTTP/2 check on an https URL (a load balancer without h2)
//   TAG_IDS     0 leaves the id out of k6's metrics tags (it is still sent as the
//               x-request-id header): throughput runs, where one time series per request
//               costs k6 CPU (over 100,000 series at 200 VUs); the lab needs the tag
//   EXTERNAL    1 runs the VUs under k6's externally-controlled executor, so a driver (the
//               lab) can pause the test through k6's REST API (--address): a pause lets
//               in-flight requests finish, where a plain stop or Ctrl-C cuts them unrecorded
// Run with --no-usage-report: k6 1.1 ignores the script's noUsageReport option.
import http from "k6/http";
import { check } from "k6";

const url = __ENV.CALC_URL || "http://127.0.0.1:4000";
const runId = __ENV.RUN_ID || String(Date.now());
const expectH2 = url.startsWith("https://") && __ENV.H2 !== "0";

const tagIds = __ENV.TAG_IDS !== "0";

const vus = parseInt(__ENV.VUS || "500", 10);
const duration = __ENV.DURATION || "5m";
const load =
  __ENV.EXTERNAL === "1"
    ? { scenarios: { load: { executor: "externally-controlled", vus, maxVUs: vus, duration } } }
    : { vus, duration };

export const options = {
  ...load,
  noConnectionReuse: __ENV.CONN_REUSE !== "1",
  discardResponseBodies: true,
  insecureSkipTLSVerify: __ENV.INSECURE === "1",
};

// calc's sum unless REQUEST_METHOD and REQUEST_PATH name another request.
const custom = Boolean(__ENV.REQUEST_METHOD && __ENV.REQUEST_PATH);
const method = custom ? __ENV.REQUEST_METHOD : "POST";
const path = custom ? __ENV.REQUEST_PATH : "/sum";
const headers = custom
  ? JSON.parse(__ENV.REQUEST_HEADERS || "{}")
  : { "content-type": "application/json" };
let body = null;
if (!custom) {
  body = JSON.stringify({ numbers: [1, 2, 3, 4] });
} else if (__ENV.REQUEST_BODY_FILE) {
  body = open(__ENV.REQUEST_BODY_FILE, "b"); // init context only: read once
} else if (__ENV.REQUEST_BODY !== undefined) {
  body = __ENV.REQUEST_BODY;
}
const expectStatus = parseInt(__ENV.EXPECT_STATUS || "200", 10);
// k6's own expected_response tag and http_req_failed agree with the check.
http.setResponseCallback(http.expectedStatuses(expectStatus));

export default function () {
  // Unique per request: a VU runs its iterations one after another.
  const rid = `${runId}-${__VU}-${__ITER}`;
  const response = http.request(method, `${url}${path}`, body, {
    headers: { ...headers, "x-request-id": rid },
    // The tag lands in the CSV output's extra_tags as rid=<id>, one row per request.
    tags: tagIds ? { rid: rid } : {},
    timeout: __ENV.TIMEOUT || "60s",
  });
  const checks = { [`status is ${expectStatus}`]: (r) => r.status === expectStatus };
  if (expectH2) {
    checks["protocol is HTTP/2"] = (r) => r.proto === "HTTP/2.0";
  }
  check(response, checks);
}
