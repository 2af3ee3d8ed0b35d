# A Coder module: `buildd agent` in each workspace of a template, working on the
# workspace's checkout, stopped cleanly when the workspace stops.
#
#   module "buildd" {
#     source   = "./buildd"            # this directory, copied into the template
#     agent_id = coder_agent.main.id
#     server   = "https://buildd.example.com"
#     api_key  = data.coder_parameter.buildd_key.value
#     dir      = "/home/coder/widgets"
#   }
#
# The key reaches the agent as an environment variable of the Coder agent
# (coder_env), never in a script's text or log.

terraform {
  required_version = ">= 1.3"
  required_providers {
    coder = {
      source  = "coder/coder"
      version = ">= 2.0"
    }
  }
}

variable "agent_id" {
  type        = string
  description = "The id of the workspace's coder_agent."
}

variable "server" {
  type        = string
  description = "The buildd server's URL."
}

variable "api_key" {
  type        = string
  sensitive   = true
  description = "A buildd account key (buildd_user_… or buildd_service_…), from a Coder parameter or an external secret."
}

variable "dir" {
  type        = string
  description = "The workspace's git checkout, which tasks branch from."
}

variable "flags" {
  type        = string
  default     = "--max-tasks 2"
  description = "More `buildd agent` flags (e.g. --hours, --pr)."
}

variable "exit_when_idle_minutes" {
  type        = number
  default     = 60
  description = "The agent exits after this many minutes with no task (0: never), so a workspace kept only for buildd has nothing running when its autostop comes."
}

variable "grace_seconds" {
  type        = number
  default     = 120
  description = "How long running tasks get to finish when the workspace stops; what is still running then goes back to the queue."
}

variable "install_url" {
  type        = string
  default     = "https://raw.githubusercontent.com/buildd-dev/buildd/main/install.sh"
  description = "Where install.sh is served; it installs buildd into ~/.local/bin when the image has none."
}

resource "coder_env" "buildd_server" {
  agent_id = var.agent_id
  name     = "BUILDD_SERVER"
  value    = var.server
}

resource "coder_env" "buildd_api_key" {
  agent_id = var.agent_id
  name     = "BUILDD_API_KEY"
  value    = var.api_key
}

resource "coder_script" "buildd_agent" {
  agent_id     = var.agent_id
  display_name = "buildd agent"
  icon         = "/icon/terminal.svg"
  run_on_start = true
  script = templatefile("${path.module}/start.sh.tftpl", {
    dir            = var.dir
    flags          = var.flags
    exit_when_idle = var.exit_when_idle_minutes
    grace          = var.grace_seconds
    install_url    = var.install_url
  })
}

resource "coder_script" "buildd_agent_stop" {
  agent_id     = var.agent_id
  display_name = "buildd agent (stop)"
  icon         = "/icon/terminal.svg"
  run_on_stop  = true
  timeout      = var.grace_seconds + 30
  script = templatefile("${path.module}/stop.sh.tftpl", {
    grace = var.grace_seconds
  })
}
