-- Store task metas and publish each on its own key's channel (celery-wire 3.4), never
-- replacing a stored SUCCESS, nor a FAILURE/REVOKED by a RETRY (a retried attempt can
-- finish before the worker that retried it stores RETRY).  One call stores a batch.
--   KEYS[i]      celery-task-meta-<id> (or celery-taskset-meta-<gid>), also the channel
--   ARGV[1]      TTL in milliseconds, "0" = no expiry
--   ARGV[2i]     the new status for KEYS[i]
--   ARGV[2i+1]   the meta bytes for KEYS[i]
-- Returns how many were stored.

-- The status of a stored meta.  JSON is decoded.  Other serializers (pickle, msgpack)
-- are read by a byte pattern: Celery and celeriac write "status" as the first key, and
-- its value follows within a few framing bytes.  A compressed meta
-- (result_compression) is opaque: nil, so never protected.
local function stored_status(raw)
    if string.sub(raw, 1, 1) == '{' then
        local ok, meta = pcall(cjson.decode, raw)
        if ok and type(meta) == 'table' and type(meta['status']) == 'string' then
            return meta['status']
        end
    end
    local at = string.find(raw, 'status', 1, true)
    if not at then
        return nil
    end
    local s, _, word = string.find(raw, '([A-Z][A-Z_][A-Z_]+)', at + 6)  -- not an opcode like 'X'
    if not s or s - (at + 6) > 8 then
        return nil
    end
    return word
end

local ttl = tonumber(ARGV[1])
local stored = 0
for i, key in ipairs(KEYS) do
    local status, meta = ARGV[2 * i], ARGV[2 * i + 1]
    -- The usual case, no meta stored yet: one SET NX stores it (nothing to protect, no read).
    local done
    if ttl > 0 then
        done = redis.call('SET', key, meta, 'NX', 'PX', ttl)
    else
        done = redis.call('SET', key, meta, 'NX')
    end
    if not done then
        local current = redis.call('GET', key)
        local old = current and stored_status(current)
        if not (old == 'SUCCESS' or (status == 'RETRY' and (old == 'FAILURE' or old == 'REVOKED'))) then
            if ttl > 0 then
                redis.call('SET', key, meta, 'PX', ttl)
            else
                redis.call('SET', key, meta)
            end
            done = true
        end
    end
    if done then
        redis.call('PUBLISH', key, meta)
        stored = stored + 1
    end
end
return stored
