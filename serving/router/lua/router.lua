-- The router's per-request logic, run inside nginx (the data plane; see dataplane.py).
--
-- The Python control process owns the routing table (weights, mirror percentage, live replicas)
-- and pushes it here as one JSON document (put_table); every request reads the current one, so a
-- change is atomic and needs no reload. Per request: pick a predictor (pin, sticky key, weights,
-- fallback), pick a live replica (retry once on another one), name the predictor in a response
-- header, and, for mirrored requests, capture both bodies and hand them to the control process,
-- which calls the shadow and compares answers off the request path.

local cjson = require "cjson.safe"
local balancer = require "ngx.balancer"
local ffi = require "ffi"
local bit = require "bit"

ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } serving_timespec;
  int clock_gettime(int clk_id, serving_timespec *tp);
]]
local timespec = ffi.new("serving_timespec")
local function now()  -- monotonic seconds with microsecond resolution (ngx.now() has ms)
  ffi.C.clock_gettime(1, timespec)
  return tonumber(timespec.tv_sec) + tonumber(timespec.tv_nsec) * 1e-9
end

local _M = {}
local shared = ngx.shared.router
local conf = {}            -- set once by init(): socket paths and limits from the config
local cached, cached_gen = nil, -1
local log_lines, log_dropped = {}, 0
local handoffs_dropped = {}  -- "shadow reason" -> mirrored pairs not handed over, sent by flush()
-- Mirrored pairs waiting for the next hand-over (hand_over()): frames, and the shadow of each.
local handoff_frames, handoff_shadows = {}, {}

local GRPC_UNAVAILABLE, GRPC_NOT_FOUND, GRPC_RESOURCE_EXHAUSTED = 14, 5, 8
local GRPC_DEADLINE_EXCEEDED, GRPC_PERMISSION_DENIED = 4, 7
local HTTP_TO_GRPC = { [403] = GRPC_PERMISSION_DENIED, [404] = GRPC_NOT_FOUND,
                       [413] = GRPC_RESOURCE_EXHAUSTED, [503] = GRPC_UNAVAILABLE,
                       [504] = GRPC_DEADLINE_EXCEEDED }

function _M.init(settings)
  conf = settings
end

-- A routing table made safe to read: every field the request path uses has its type, whatever
-- the JSON held (a JSON null decodes to cjson.null, a userdata that is truthy in Lua). Returns
-- nil and the offending field when the table cannot be used at all.
local function list_of_strings(v)
  local out = {}
  if type(v) == "table" then
    for _, item in ipairs(v) do
      if type(item) == "string" then out[#out + 1] = item end
    end
  end
  return out
end

local function sanitised(t)
  if type(t) ~= "table" then return nil, "the table is not a JSON object" end
  if type(t.generation) ~= "number" then return nil, "generation must be a number" end
  if type(t.predictors) ~= "table" then return nil, "predictors must be an object" end
  local predictors, endpoints = {}, {}
  for name, p in pairs(t.predictors) do
    if type(name) == "string" and type(p) == "table" then
      local entry = { version = type(p.version) == "string" and p.version or "-",
                      pool = type(p.pool) == "string" and p.pool or name,
                      replicas = tonumber(p.replicas) or 0,
                      rest = list_of_strings(p.rest), grpc = list_of_strings(p.grpc) }
      for _, kind in ipairs({ "rest", "grpc" }) do
        for _, addr in ipairs(entry[kind]) do  -- split once per table for balance()
          local host, port = addr:match("^(.+):(%d+)$")
          if host then endpoints[addr] = { host, tonumber(port) } end
        end
      end
      predictors[name] = entry
    end
  end
  local weights, total = {}, 0
  if type(t.weights) == "table" then
    for _, w in ipairs(t.weights) do
      if type(w) == "table" and predictors[w[1]] and type(w[2]) == "number" and w[2] > 0 then
        weights[#weights + 1] = { w[1], w[2] }
        total = total + w[2]
      end
    end
  end
  return {
    generation = t.generation,
    predictors = predictors,
    endpoints = endpoints,
    weights = weights,
    totalWeight = total,
    stable = predictors[t.stable] and t.stable or nil,
    fallback = t.fallback == true,
    shadow = predictors[t.shadow] and t.shadow or nil,
    mirrorPercent = type(t.mirrorPercent) == "number" and t.mirrorPercent or 0,
  }
end

-- The routing table, decoded once per change (per worker).
local function current()
  local gen = shared:get("generation")
  if gen ~= cached_gen then
    local decoded = sanitised(cjson.decode(shared:get("table") or "null"))
    if decoded then
      cached, cached_gen = decoded, decoded.generation
    end
  end
  return cached
end

-- A gRPC "trailers-only" answer: the status in the only HEADERS frame, which must end the
-- stream (status 204 makes nginx send no body, hence END_STREAM on the headers).
local function grpc_status(code, message)
  ngx.status = 204
  ngx.var.grpc_error_type = "application/grpc"  -- see the gRPC server block in dataplane.py
  ngx.header["grpc-status"] = code
  ngx.header["grpc-message"] = ngx.escape_uri(message)
  return ngx.exit(204)
end

-- An error answer in the caller's protocol: JSON for REST, a gRPC status for gRPC.
local function reject(kind, status, message)
  ngx.ctx.error = true
  if kind == "grpc" then
    return grpc_status(HTTP_TO_GRPC[status] or 13, message)
  end
  ngx.status = status
  ngx.header["content-type"] = "application/json"
  ngx.print(cjson.encode({ error = message }))
  return ngx.exit(status)
end

local function names(t)
  local list = {}
  for name in pairs(t.predictors) do list[#list + 1] = "'" .. name .. "'" end
  table.sort(list)
  return "[" .. table.concat(list, ", ") .. "]"
end

-- A point in [0, 1): random, or fixed for a caller id so it stays on one predictor.
local function point(key)
  if key and key ~= "" then
    return (ngx.crc32_long(key) % 1000003) / 1000003
  end
  return math.random()
end

local function pick(t, key)
  local x, acc = point(key) * t.totalWeight, 0
  for _, entry in ipairs(t.weights) do
    acc = acc + entry[2]
    if x < acc then return entry[1] end
  end
  return t.weights[#t.weights][1]
end

-- Replicas of a predictor this router may send to: live per the control process, and not
-- refused a connection in the last second (marked by balance()).
local function live(p, kind)
  local out = {}
  for _, addr in ipairs(p[kind]) do
    if not shared:get("down:" .. addr) then out[#out + 1] = addr end
  end
  return out
end

-- Seldon Core v1.18.2's executor, protocol v2, serves exactly these REST routes (after the
-- /seldon/<namespace>/<deployment> prefix, which Istio strips) and nothing else: no repository
-- API (load/unload), no version paths. Matched on nginx's decoded, normalised $uri; what is
-- forwarded is rebuilt from the matched parts, so what reaches MLServer is what was checked.
local MODEL_NAME = "[%w][%w%._%-]*"
local REST_ROUTES = {
  { "^/v2/models/(" .. MODEL_NAME .. ")/infer$", "POST", "infer",
    function(m) return "/v2/models/" .. m .. "/infer" end },
  { "^/v2/models/infer$", "POST", "infer",
    function() return "/v2/models/" .. conf.model .. "/infer" end },
  { "^/v2/models/(" .. MODEL_NAME .. ")/ready$", "GET", "ready",
    function(m) return "/v2/models/" .. m .. "/ready" end },
  { "^/v2/models/(" .. MODEL_NAME .. ")$", "GET", "metadata",
    function(m) return "/v2/models/" .. m end },
  { "^/v2/health/ready$", "GET", "ready", function() return "/v2/health/ready" end },
  { "^/v2/docs/?([%w%._%-/]*)$", "GET", "docs",
    function(file) return file == "" and "/v2/docs" or "/v2/docs/" .. file end },
}
local SERVED = "POST /v2/models/<model>/infer, POST /v2/models/infer, " ..
  "GET /v2/models/<model>/ready, GET /v2/models/<model>, GET /v2/health/ready, GET /v2/docs/, " ..
  "GET /live, GET /ready, GET /prometheus"
-- gRPC methods (the location in nginx.conf.j2 admits only these three)
local GRPC_SERVICES = { ModelInfer = "infer", ModelReady = "ready", ModelMetadata = "metadata" }

-- The route of a REST request: service name and upstream path, or an error answer.
local function rest_route(kind)
  local path = ngx.var.uri:sub(#conf.seldonPrefix + 1)
  local method = ngx.req.get_method()
  for _, route in ipairs(REST_ROUTES) do
    local captured = path:match(route[1])  -- the model name, or the whole path if none
    if captured then
      if method ~= route[2] then
        ngx.header["allow"] = route[2]
        return reject(kind, 405, method .. " " .. path .. ": method not allowed; use " ..
          route[2])
      end
      return route[3], route[4](captured)
    end
  end
  return reject(kind, 404, "no route " .. path .. " under " .. conf.seldonPrefix ..
    "; Seldon's executor serves " .. SERVED)
end

local function constant_time_equal(a, b)  -- a wrong token takes as long whatever it shares
  if type(a) ~= "string" or #a ~= #b then return false end
  local diff = 0
  for i = 1, #b do diff = bit.bor(diff, bit.bxor(a:byte(i), b:byte(i))) end
  return diff == 0
end

-- access phase: check the route, choose the predictor and its replicas; decide on mirroring.
function _M.access(kind, sticky_key)
  local ctx = ngx.ctx
  local var = ngx.var
  -- Kept in nginx variables, not ngx.ctx: they must survive error_page's internal redirect.
  var.started = now()
  local service
  if kind == "grpc" then
    service = GRPC_SERVICES[var.uri:match("([^/]+)$")]
  else
    local upstream_path
    service, upstream_path = rest_route(kind)
    var.upstream_path = upstream_path
  end
  var.service = service
  local t = current()
  if not t then
    return reject(kind, 503, "the router has no routing table yet; retry shortly")
  end
  local pin = var.http_x_seldon_predictor
  local name
  if pin and pin ~= "" then
    -- Pinning bypasses the weights (and could aim a caller's bad requests at a candidate),
    -- so it needs the router's pin token.
    if not constant_time_equal(var.http_x_serving_pin_token, conf.pinToken) then
      return reject(kind, 403, "x-seldon-predictor needs the header x-serving-pin-token with " ..
        "the router's pin token (pinToken in the stack's state file, or $" ..
        conf.pinTokenEnv .. " when the stack was started); without it, send no " ..
        "x-seldon-predictor and the weights decide")
    end
    if not t.predictors[pin] then
      return reject(kind, 404, "x-seldon-predictor: no predictor named '" .. pin ..
        "'; predictors are " .. names(t))
    end
    if pin == t.shadow and not conf.allowShadowPin then
      return reject(kind, 403, "x-seldon-predictor: '" .. pin .. "' is the shadow, whose " ..
        "answers never reach callers (router.allowShadowPin allows it)")
    end
    name = pin
  else
    if #t.weights == 0 then
      return reject(kind, 503, "no predictor has traffic > 0")
    end
    name = pick(t, sticky_key)
  end
  local p = t.predictors[name]
  local peers = live(p, kind)
  local fallback_from
  if #peers == 0 and not pin and t.fallback and t.stable and name ~= t.stable then
    local stable = t.predictors[t.stable]
    local stable_peers = live(stable, kind)
    if #stable_peers > 0 then
      fallback_from = name
      name, p, peers = t.stable, stable, stable_peers
    end
  end
  var.predictor, var.predictor_version = name, p.version
  if fallback_from then var.fallback_from = fallback_from end
  if #peers == 0 then
    return reject(kind, 503, "predictor '" .. name .. "' has no live replica (" ..
      p.replicas .. " down); it is being restarted, retry shortly")
  end
  ctx.peers, ctx.endpoints = peers, t.endpoints
  -- per pool (not per name: a replaced predictor keeps its name), read before a pool is stopped
  var.counted = p.pool
  shared:incr("in_flight:" .. p.pool, 1, 0)
  if service == "infer" and t.shadow and t.shadow ~= name and
      math.random() * 100 < t.mirrorPercent then
    ctx.mirror = t.shadow
  end
  if ctx.mirror then
    -- Mirrored bodies are read whole so they can be handed to the shadow afterwards. Only
    -- those: nginx sends a body read here as a buffered one, and sets TCP_NODELAY on the
    -- upstream connection only for streamed bodies. With Nagle on, a gRPC request written
    -- behind one of nginx's small HTTP/2 frames (a PING ACK) waits for MLServer's delayed
    -- ACK: 40 ms, for about one gRPC request in a thousand. A refused connection is still
    -- retried: nothing of the body was sent.
    ngx.req.read_body()
    ctx.request_body = ngx.req.get_body_data()
    -- the captured answer must be comparable: plain, not gzipped for the caller
    ngx.req.clear_header("Accept-Encoding")
  end
end

-- Requests this worker has sent to each replica and not yet seen answered, by address. Module
-- state is enough: nginx.conf.j2 runs one worker.
local in_flight_at = {}

local function release(addr)
  local n = in_flight_at[addr]
  if n then in_flight_at[addr] = n > 1 and n - 1 or nil end
end

-- balancer phase: the replica with the fewest requests in flight (Istio's default load balancer
-- is LEAST_REQUEST), ties going to the first listed. So a lone caller keeps one replica busy
-- and warm instead of waking each in turn: on the shared 2-core machine a process woken for
-- every other request spends about twice the CPU on each (docs/benchmarks.md, issue 13). More
-- callers spread over the replicas as their requests overlap. A retry (a refused or reset
-- connection) goes to the least busy replica not tried yet. The replica of the current try is
-- kept in $peer (an nginx variable: it must survive error_page's internal redirect, so log()
-- can release it).
function _M.balance()
  local ctx = ngx.ctx
  local peers = ctx.peers
  local var = ngx.var
  local last = var.peer
  if last == "" then
    if #peers > 1 then balancer.set_more_tries(1) end
  else
    release(last)
    ctx.tried = ctx.tried or {}
    ctx.tried[last] = true
    local _, failure = balancer.get_last_failure()
    if failure and #peers > 1 then
      -- keep other requests off it until the control process says otherwise
      shared:set("down:" .. last, true, 1)
    end
  end
  local tried = ctx.tried
  local addr, least
  for _, candidate in ipairs(peers) do
    if not (tried and tried[candidate]) then
      local n = in_flight_at[candidate] or 0
      if not least or n < least then addr, least = candidate, n end
    end
  end
  addr = addr or peers[1]  -- every replica tried: nginx stops after set_more_tries anyway
  in_flight_at[addr] = (in_flight_at[addr] or 0) + 1
  var.peer = addr
  local endpoint = ctx.endpoints[addr]
  local ok, err = balancer.set_current_peer(endpoint[1], endpoint[2])
  if not ok then ngx.log(ngx.ERR, "set_current_peer ", addr, ": ", err) end
end

-- Every answer says which predictor served it (also errors nginx generated itself).
function _M.header_filter()
  local name = ngx.var.predictor
  if name ~= "" then ngx.header["x-seldon-predictor"] = name end
end

function _M.body_filter()
  local ctx = ngx.ctx
  if ctx.mirror then
    local chunk = ngx.arg[1]
    if chunk ~= "" then
      local parts = ctx.parts or {}
      parts[#parts + 1] = chunk
      ctx.parts = parts
    end
  end
end

-- error_page targets: nginx's own errors, answered in the caller's protocol.
function _M.upstream_error(kind, status)
  local name = ngx.var.predictor
  if status == 504 then
    return reject(kind, 504, "predictor '" .. name .. "' did not answer within " ..
      conf.upstreamTimeout .. "s (router.upstreamTimeoutSeconds)")
  end
  if status == 413 then
    return reject(kind, 413, "request body above " .. conf.maxBodyBytes ..
      " bytes (router.maxBodyBytes); send fewer rows per request")
  end
  return reject(kind, 503, "predictor '" .. name ..
    "': no replica could be reached; retry shortly")
end

local function grpc_code()
  local v = ngx.var
  return v.upstream_trailer_grpc_status or v.upstream_http_grpc_status or
    v.sent_http_grpc_status or "-"
end

-- A mirrored pair that never reached the shadow worker: counted like the worker's own drops.
local function handoff_dropped(shadow, reason)
  local key = shadow .. " " .. reason
  handoffs_dropped[key] = (handoffs_dropped[key] or 0) + 1
end

-- One write of `data` (a string or a table of strings) to a unix socket, the connection kept.
local function send_to(socket, data, timeout_ms)
  local sock = ngx.socket.tcp()
  sock:settimeout(timeout_ms)
  local ok, err = sock:connect(socket)
  if ok then ok, err = sock:send(data) end
  if ok then
    sock:setkeepalive(60000, 1)
  else
    sock:close()
  end
  return ok, err
end

-- Every hand-over interval (at most 0.5 s), the mirrored pairs collected since the last one go
-- to the shadow worker in one write, not a timer and a send per mirrored request.
local function hand_over(premature)
  if #handoff_shadows == 0 then return end
  local frames, shadows = handoff_frames, handoff_shadows
  handoff_frames, handoff_shadows = {}, {}
  if not send_to(conf.shadowSocket, frames, conf.handoffTimeoutMs) then
    for _, shadow in ipairs(shadows) do handoff_dropped(shadow, "handoff_failed") end
  end
end

-- log phase: one metrics line per request (sent in batches by flush()), and the mirrored pair.
function _M.log(kind)
  local var = ngx.var
  local name = var.predictor
  if name == "" then return end  -- refused before a predictor was chosen (bad path, metadata)
  local ctx = ngx.ctx
  if var.counted ~= "" then shared:incr("in_flight:" .. var.counted, -1, 0) end
  if var.peer ~= "" then release(var.peer) end
  local code = kind == "grpc" and grpc_code() or var.status
  local addrs = var.upstream_addr or ""
  local _, retries = addrs:gsub(",", "")
  if #log_lines < 100000 then
    local fallback_from = var.fallback_from
    log_lines[#log_lines + 1] = table.concat({ name, var.predictor_version, var.service,
      kind == "grpc" and "unary" or ngx.req.get_method(), code,
      string.format("%.6f", now() - tonumber(var.started)), retries,
      fallback_from ~= "" and fallback_from or "-" }, " ")
  else
    log_dropped = log_dropped + 1
  end
  if ctx.mirror and not ctx.error and ctx.parts then
    if #handoff_shadows >= conf.maxHandoffs then
      handoff_dropped(ctx.mirror, "handoff_limit")
      return
    end
    local request = ctx.request_body or ""
    local response = table.concat(ctx.parts)
    local path = kind == "grpc" and var.uri or var.upstream_path
    local frames = handoff_frames
    frames[#frames + 1] = table.concat({ kind, ctx.mirror, name, path, code, #request,
      #response }, " ") .. "\n"
    frames[#frames + 1] = request
    frames[#frames + 1] = response
    handoff_shadows[#handoff_shadows + 1] = ctx.mirror
  end
end

-- Every 100 ms, each worker sends its metrics lines to the control process in one write.
local function flush(premature)
  if #log_lines == 0 and log_dropped == 0 and next(handoffs_dropped) == nil then return end
  local batch = log_lines
  log_lines = {}
  if log_dropped > 0 then
    batch[#batch + 1] = "#dropped " .. log_dropped
    log_dropped = 0
  end
  for key, n in pairs(handoffs_dropped) do
    local shadow, reason = key:match("^(%S+) (%S+)$")
    batch[#batch + 1] = "#shadow " .. shadow .. " dropped " .. n .. " " .. reason
  end
  handoffs_dropped = {}
  local ok, err = send_to(conf.telemetrySocket, table.concat(batch, "\n") .. "\n", 1000)
  if not ok then
    ngx.log(ngx.WARN, "metrics lines lost (control process unreachable): ", err)
  end
end

function _M.init_worker()
  math.randomseed(ngx.worker.pid() * 1000 + math.floor(ngx.now() * 1000) % 1000)
  ngx.timer.every(0.1, flush)
  ngx.timer.every(conf.handoffInterval, hand_over)
end

-- gRPC calls without the deployment's metadata, or for another service.
function _M.reject_grpc_metadata(deployment, namespace)
  return reject("grpc", 404, "no SeldonDeployment for metadata seldon='" ..
    (ngx.var.http_seldon or "") .. "' namespace='" .. (ngx.var.http_namespace or "") ..
    "'; send metadata seldon=" .. deployment .. ", namespace=" .. namespace)
end

function _M.reject_unimplemented()
  return grpc_status(12, "not implemented: Seldon's executor serves only " ..
    "inference.GRPCInferenceService/ModelInfer, ModelReady and ModelMetadata")
end

-- GET <prefix>/live and /ready, which Seldon's executor answers itself: live while the router
-- runs; ready while every predictor with traffic has a live replica.
function _M.probe(which)
  if which == "ready" then
    local t = current()
    local missing = not t and "the router has no routing table yet" or nil
    for _, entry in ipairs(t and t.weights or {}) do
      if #live(t.predictors[entry[1]], "rest") == 0 then
        missing = "predictor '" .. entry[1] .. "' has no live replica"
      end
    end
    if missing then return reject("rest", 503, missing) end
  end
  ngx.header["content-type"] = "application/json"
  ngx.say('{"status": "ok"}')
end

-- error_page target for errors nginx makes itself (bad framing, oversized headers or URI,
-- a method nginx refuses): JSON like the router's other errors.
local NGINX_ERRORS = {
  [400] = "bad request: the request line, a header or the body framing is malformed, or a " ..
    "header line is above 8 KB (nginx's large_client_header_buffers)",
  [405] = "method not allowed",
  [413] = "request body too large",
  [414] = "request URI too long",
  [494] = "request headers too large",
  [500] = "internal error in the router",
  [502] = "no replica could be reached",
  [503] = "service unavailable",
  [504] = "the upstream did not answer in time",
}
function _M.nginx_error()
  local status = ngx.status
  local message = NGINX_ERRORS[status] or ("error " .. status)
  if status == 494 then status = 400 end  -- nginx's internal code for oversized headers
  ngx.status = status
  ngx.header["content-type"] = "application/json"
  ngx.print(cjson.encode({ error = message }))
  return ngx.exit(status)
end

-- PUT /table on the control socket: the control process installs a new routing table.
function _M.put_table()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  local t, problem = sanitised(body and cjson.decode(body))
  if not t then
    ngx.status = 400
    ngx.say("expected a routing table as JSON: " .. problem)
    return ngx.exit(400)
  end
  shared:set("table", body)
  shared:set("generation", t.generation)
  ngx.say("ok")
end

-- GET /counters?in_flight=<pool> on the control socket: a pool's requests in flight.
function _M.counters()
  ngx.header["content-type"] = "application/json"
  local counters = {}
  local name = ngx.var.arg_in_flight
  if name then counters.inFlight = shared:get("in_flight:" .. name) or 0 end
  ngx.say(cjson.encode(counters))
end

return _M
