/**
 * The login-shell files of the built-in templates. The e2b SDK runs every command as
 * `/bin/bash -l -c`, so a login shell's startup is paid on every `commands.run`: these files
 * start no process (Debian's own run `id -u` on every login, and `mesg` for root), and they keep
 * the environment the agent hands the shell (PATH, HOME, USER, LOGNAME: the sandbox's and the
 * command's `envs`), where Debian's /etc/profile would reset PATH.
 */

/** /etc/profile: LANG, the interactive prompt (through /etc/bash.bashrc), /etc/profile.d. */
export const loginProfile = `# /etc/profile: system-wide .profile for Bourne-compatible login shells, written by sandcell.
# The e2b SDK starts every command as a login shell: outside interactive shells, nothing here
# may start a process. PATH, HOME, USER and LOGNAME come from the sandbox and the command.

export LANG="\${LANG:-C.UTF-8}"

if [ "\${PS1-}" ]; then
  if [ "\${BASH-}" ] && [ "$BASH" != "/bin/sh" ]; then
    # The prompt and terminal settings of interactive bash shells.
    if [ -f /etc/bash.bashrc ]; then
      . /etc/bash.bashrc
    fi
  elif [ "\${EUID:-$(id -u)}" -eq 0 ]; then
    PS1='# '
  else
    PS1='$ '
  fi
fi

if [ -d /etc/profile.d ]; then
  for i in /etc/profile.d/*.sh; do
    if [ -r "$i" ]; then
      . "$i"
    fi
  done
  unset i
fi
`

/** /etc/bash.bashrc of the `base` template (Debian's has the same prompt). */
export const baseBashrc = `# /etc/bash.bashrc: system-wide settings of interactive bash shells, written by sandcell.

[ -z "\${PS1-}" ] && return

shopt -s checkwinsize
PS1='\\u@\\h:\\w\\$ '
`

/**
 * root's ~/.profile in the `debian` template: Debian's, with `mesg n` only on a terminal (it only
 * ever acts on one, and elsewhere it is a process start per command).
 */
export const debianRootProfile = `# ~/.profile: executed by Bourne-compatible login shells.

if [ "$BASH" ]; then
  if [ -f ~/.bashrc ]; then
    . ~/.bashrc
  fi
fi

if [ -t 0 ]; then
  mesg n 2> /dev/null || true
fi
`
