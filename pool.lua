local requests, index, delay_ms = {}, 0, 0
function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  local pos = 1
  while pos <= #data do
    local newline = string.find(data, "\n", pos, true)
    local size = tonumber(string.sub(data, pos, newline - 1))
    requests[#requests + 1] = string.sub(data, newline + 1, newline + size)
    pos = newline + 1 + size
  end
  delay_ms = tonumber(args[2] or "0")
end
function request()
  index = index + 1
  if index > #requests then
    io.stderr:write("request pool exhausted\n")
    index = 1
  end
  return requests[index]
end
if tonumber(os.getenv("WRK_DELAY_MS") or "0") > 0 then
  function delay() return delay_ms end
end
function done(summary, latency, requests_)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "status_errors": %d,'
    .. ' "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
