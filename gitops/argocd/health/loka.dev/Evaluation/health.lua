-- ArgoCD health of a Loka Evaluation. Plain Lua 5.1 for ArgoCD's sandbox: no string or math library.
local hs = {status = "Progressing", message = "Waiting for the Loka operator to observe the evaluation"}
local status = obj.status
if status == nil or status.phase == nil then
  return hs
end

local function figures()
  local text = ""
  if status.samplesJudged ~= nil then
    text = status.samplesJudged .. " samples judged"
  end
  if status.preferences ~= nil then
    if text ~= "" then
      text = text .. ", "
    end
    text = text .. status.preferences .. " preference pairs"
  end
  return text
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = figures()
  if hs.message == "" then
    hs.message = "Succeeded"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = status.message or "Failed"
elseif phase == "Pending" or phase == "Queued" or phase == "Running" then
  hs.status = "Progressing"
  hs.message = status.message or phase
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. phase
end
return hs
