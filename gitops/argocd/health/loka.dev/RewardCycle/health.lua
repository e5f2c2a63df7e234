-- ArgoCD health of a Loka RewardCycle. Plain Lua 5.1 for ArgoCD's sandbox: no string or math library.
-- Its stages (TrainingRuns, Evaluations) have health checks of their own; this reads the cycle's summary of them.
local hs = {status = "Progressing", message = "Waiting for the Loka operator to observe the cycle"}
local status = obj.status
if status == nil or status.phase == nil then
  return hs
end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration < obj.metadata.generation then
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Pending" or phase == "Running" then
  hs.status = "Progressing"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. phase
  return hs
end
hs.message = status.message or phase
return hs
