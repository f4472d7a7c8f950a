-- Store task metas and publish each on its own key's channel (celery-wire 3.4), never
-- replacing a stored SUCCESS.  One call stores a whole batch atomically.
--   KEYS[i]    celery-task-meta-<id> (or celery-taskset-meta-<gid>), also the channel
--   ARGV[1]    TTL in milliseconds, "0" = no expiry
--   ARGV[i+1]  the meta bytes for KEYS[i]
-- Returns how many were stored.

-- Is a stored meta a SUCCESS?  JSON is decoded.  Other serializers (pickle, msgpack) are
-- read by a byte pattern: Celery and celeriac write "status" as the first key, and its
-- value follows within a few framing bytes.  A compressed meta (result_compression) is
-- opaque and so never protected.
local function is_success(raw)
    if string.sub(raw, 1, 1) == '{' then
        local ok, meta = pcall(cjson.decode, raw)
        if ok and type(meta) == 'table' then
            return meta['status'] == 'SUCCESS'
        end
    end
    local at = string.find(raw, 'status', 1, true)
    if not at then
        return false
    end
    local s = string.find(raw, 'SUCCESS', at + 6, true)
    if not s or s - (at + 6) > 8 then
        return false
    end
    local after = string.byte(raw, s + 7)
    return not after or not ((after >= 65 and after <= 90) or after == 95)
end

local ttl = tonumber(ARGV[1])
local stored = 0
for i, key in ipairs(KEYS) do
    local current = redis.call('GET', key)
    if not (current and is_success(current)) then
        local meta = ARGV[i + 1]
        if ttl > 0 then
            redis.call('SET', key, meta, 'PX', ttl)
        else
            redis.call('SET', key, meta)
        end
        redis.call('PUBLISH', key, meta)
        stored = stored + 1
    end
end
return stored
