-- Dovecot push_notification Lua driver: wakes the mailrepl source gateway when a mailbox changes.
--
-- Optional: without it the gateway polls (idle mailboxes further apart) and keeps IMAP push
-- connections for the most active ones only. With it, any message change of any mailbox (a
-- delivery, an append, a flag, an expunge) starts that mailbox's capture at once, whatever the
-- number of mailboxes. One small HTTP POST per transaction that changed something; nothing
-- about the change travels (the gateway reads it back over IMAP). Configure (dovecot.conf):
--
--   mail_plugins = $mail_plugins notify push_notification push_notification_lua
--   plugin {
--     push_notification_driver = lua:file=/etc/dovecot/mailrepl-push.lua
--     mailrepl_push_url = http://gateway.example.org:8470/api/v1/push/primary
--     mailrepl_push_token = <a viewer token of the source gateway: mailrepl tokens create dovecot-push --role viewer>
--     # optional: how long a post may wait for the gateway's answer, in ms (default 1000, 50 to 10000)
--     #mailrepl_push_timeout_msecs = 1000
--   }
--
-- The POST waits at most mailrepl_push_timeout_msecs (1 s) and is never retried: a missed wake-up
-- costs at most two poll intervals (a mailbox a wake-up has just captured is left out of the next
-- poll's sweep).
-- No connect back-off is carried from one change to the next, so a gateway that is down costs
-- a refused connection per change, not a growing wait. A gateway that takes the connection but
-- does not answer (hung, or its host overloaded) makes the change wait the whole timeout: after
-- a post that timed out, the same user session (an IMAP client's) posts nothing for QUIET_SECONDS
-- (the gateway's poll finds those changes), so it waits once, not at every change. Dovecot loads
-- the script anew for each LMTP delivery, so there every delivery can wait the timeout while
-- the gateway hangs: the warning below says so in Dovecot's log; a shorter
-- mailrepl_push_timeout_msecs bounds it.
local QUIET_SECONDS = 30
local DEFAULT_TIMEOUT_MSECS = 1000
local TIMED_OUT = 9008  -- Dovecot's HTTP client: the request timed out (9000 and up: no HTTP answer)
local client = nil
local quiet_until = 0

local function timeout_msecs(user)
  local ms = tonumber(user:plugin_getenv("mailrepl_push_timeout_msecs") or "")
  if ms == nil then
    return DEFAULT_TIMEOUT_MSECS
  end
  return math.max(50, math.min(10000, math.floor(ms)))
end

local function http(timeout)
  if client == nil then
    client = dovecot.http.client({max_attempts = 1, request_absolute_timeout_msecs = timeout,
                                  connect_backoff_max_time_msecs = 0})
  end
  return client
end

function dovecot_lua_notify_begin_txn(user)
  return {user = user, name = user.username, changed = false}
end

local function changed(ctx, event)
  ctx.changed = true
end

-- Message events only: folder creations happen at a mailbox's first login (Dovecot creates the
-- special-use folders then, also for the gateway's own first session), and folder changes are
-- rare and found by the next poll.
dovecot_lua_notify_event_message_new = changed
dovecot_lua_notify_event_message_append = changed
dovecot_lua_notify_event_message_expunge = changed
dovecot_lua_notify_event_flags_set = changed
dovecot_lua_notify_event_flags_clear = changed
dovecot_lua_notify_event_message_read = changed
dovecot_lua_notify_event_message_trash = changed

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function dovecot_lua_notify_end_txn(ctx, success)
  if not ctx.changed then
    return
  end
  if os.time() < quiet_until then
    return
  end
  local url = ctx.user:plugin_getenv("mailrepl_push_url")
  local token = ctx.user:plugin_getenv("mailrepl_push_token")
  if url == nil or url == "" then
    return
  end
  local timeout = timeout_msecs(ctx.user)
  local req = http(timeout):request({url = url, method = "POST"})
  req:add_header("Content-Type", "application/json")
  if token ~= nil and token ~= "" then
    req:add_header("Authorization", "Bearer " .. token)
  end
  req:set_payload('{"user": ' .. json_string(ctx.name) .. '}')
  local ok, resp = pcall(function() return req:submit() end)
  if not ok then
    dovecot.i_warning("mailrepl push: " .. tostring(resp))
  elseif resp:status() == TIMED_OUT then
    quiet_until = os.time() + QUIET_SECONDS
    dovecot.i_warning("mailrepl push: no answer from the gateway within " .. timeout ..
                      " ms; no wake-ups from this session for " .. QUIET_SECONDS .. " s")
  elseif resp:status() >= 9000 then
    dovecot.i_warning("mailrepl push: could not reach the gateway (HTTP client error " .. resp:status() .. ")")
  elseif resp:status() >= 300 then
    dovecot.i_warning("mailrepl push: the gateway answered " .. resp:status())
  end
end
