-- ArgoCD health of a Loka TrainingRun. Plain Lua 5.1 for ArgoCD's sandbox: no string or math library.
local hs = {status = "Progressing", message = "Waiting for the Loka operator to observe the run"}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

-- "reason: message" from a condition, or the fallback when the condition says nothing.
local function explain(c, fallback)
  if c == nil then
    return fallback
  end
  if c.message ~= nil and c.message ~= "" then
    if c.reason ~= nil and c.reason ~= "" then
      return c.reason .. ": " .. c.message
    end
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

-- The operator's own words for a wait (status.message), else the condition that explains the phase.
local function waiting(status, c, fallback)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return explain(c, fallback)
end

local function progress(status)
  local text = ""
  if status.progress ~= nil and status.progress.step ~= nil then
    text = "step " .. status.progress.step
    if status.progress.totalSteps ~= nil then
      text = text .. "/" .. status.progress.totalSteps
    end
  end
  if status.metrics ~= nil and status.metrics.rewardMean ~= nil then
    if text ~= "" then
      text = text .. ", "
    end
    text = text .. "reward " .. status.metrics.rewardMean
  end
  return text
end

local status = obj.status
if status == nil or status.phase == nil then
  return hs
end

-- Until the operator has seen the latest spec, its phase describes an older one.
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Waiting for the Loka operator to observe generation " .. generation
  return hs
end

local phase = status.phase
local failed = condition(status, "Failed")
local valid = condition(status, "Valid")
local secrets = condition(status, "SecretsReady")
local launched = condition(status, "Launched")

if phase == "Failed" or (failed ~= nil and failed.status == "True") then
  hs.status = "Degraded"
  hs.message = explain(failed, status.message or "Training run failed")
  return hs
end
if valid ~= nil and valid.status == "False" then
  hs.status = "Degraded"
  hs.message = explain(valid, "The spec is invalid")
  return hs
end
if secrets ~= nil and secrets.status == "False" then
  hs.status = "Degraded"
  hs.message = explain(secrets, "A referenced Secret or key is missing")
  return hs
end

-- A child the run needs is refused or taken (NameConflict, CreateRefused): waiting will not fix it.
if launched ~= nil and launched.status == "False" then
  hs.status = "Degraded"
  hs.message = explain(launched, "The run's children cannot be created")
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = explain(condition(status, "Succeeded"), "Training finished")
  local done = progress(status)
  if done ~= "" then
    hs.message = hs.message .. " (" .. done .. ")"
  end
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = waiting(status, condition(status, "Suspended"), "Suspended")
  return hs
end

if phase == "Queued" then
  -- Like a suspended batch Job: waiting for Kueue to admit it is not a fault.
  hs.status = "Suspended"
  hs.message = waiting(status, condition(status, "Admitted"), "Waiting for Kueue to admit the run")
  return hs
end

if phase == "Running" then
  hs.status = "Progressing"
  local done = progress(status)
  if done == "" then
    hs.message = "Training"
  else
    hs.message = "Training: " .. done
  end
  return hs
end

if phase == "Pending" or phase == "Starting" or phase == "Resuming" then
  hs.status = "Progressing"
  hs.message = waiting(status, condition(status, "Training"), phase)
  if phase == "Resuming" and status.checkpoint ~= nil and status.checkpoint.step ~= nil then
    hs.message = hs.message .. " (resumes from step " .. status.checkpoint.step .. ")"
  end
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. phase
return hs
