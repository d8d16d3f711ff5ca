// Python plugins (policy packs) run by the language host: RunPlugin and what it needs.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	sdk "github.com/pulumi/pulumi/sdk/v3"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
)

// RunPlugin runs a plugin written in Python: the engine starts a Python policy pack (`pulumi preview
// --policy-pack DIR`, PulumiPolicy.yaml with `runtime: python`) through it, with kind "analyzer" and the
// engine address as the only argument. As Pulumi's host does:
//
//   - the interpreter is the pack's virtualenv (PulumiPolicy.yaml runtime.options.virtualenv, relative to
//     the pack); without one, ours falls back to the program's (Pulumi.yaml above the working directory),
//     where Pulumi's would insist on DIR/venv;
//   - an analyzer runs as `python -u -m pulumi.policy ENGINE DIR` in the engine's working directory, behind
//     sdk.PolicyProxy: the proxy answers the engine first, so that the stack's ConfigureStack request can be
//     handed to pulumi-policy the only way it reads it, as PULUMI_PROJECT, PULUMI_STACK, PULUMI_ORGANIZATION,
//     PULUMI_DRY_RUN and PULUMI_CONFIG; then it forwards every call to the pack;
//   - any other kind runs as `python -u DIR ARGS...` (the directory's __main__.py);
//   - stdout and stderr stream back as they come, then the exit code.
//
// Like the program, the plugin is killed when the engine or this host goes away.
func (h *host) RunPlugin(req *pulumirpc.RunPluginRequest, server grpc.ServerStreamingServer[pulumirpc.RunPluginResponse]) error {
	ctx := server.Context()
	info := req.GetInfo()
	if info == nil || info.GetProgramDirectory() == "" {
		return errors.New("RunPlugin: the request names no plugin directory")
	}
	dir := info.GetProgramDirectory()
	python, venv, err := h.pluginPython(req)
	if err != nil {
		return err
	}

	out := &streamSender{server: server}
	defer out.close()
	var stdout io.Writer = out.writer(false)
	stderr := out.writer(true)

	env := req.GetEnv()
	if len(env) == 0 {
		env = os.Environ()
	}
	env = append(env[:len(env):len(env)], "PYTHONUNBUFFERED=1")
	if venv != "" {
		env = append(env, "VIRTUAL_ENV="+venv, "PATH="+filepath.Join(venv, "bin")+":"+getenv(env, "PATH"))
	}

	var args []string
	var proxy *sdk.PolicyProxy
	if req.GetKind() == "analyzer" {
		args = append(append([]string{"-u", "-m", "pulumi.policy"}, req.GetArgs()...), dir)
		proxy, stdout, err = sdk.NewPolicyProxy(ctx, stdout)
		if err != nil {
			return fmt.Errorf("could not start the policy pack proxy: %w", err)
		}
		config, err := proxy.AwaitConfiguration(ctx)
		if err != nil {
			return fmt.Errorf("could not get the stack configuration: %w", err)
		}
		if env, err = policyEnv(env, config); err != nil {
			return err
		}
	} else {
		args = append([]string{"-u", dir}, req.GetArgs()...)
	}

	cmd := exec.CommandContext(ctx, python, args...)
	cmd.Dir = req.GetPwd()
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = 5 * time.Second // a grandchild holding the pipes open must not hang the host

	runtime.LockOSThread() // until the plugin has been waited for (Pdeathsig, see start)
	defer runtime.UnlockOSThread()
	done, err := h.start(cmd)
	if err != nil {
		if proxy != nil {
			proxy.Abort(err)
		}
		return fmt.Errorf("could not run %s: %w", python, err)
	}
	defer done()
	if proxy != nil {
		// Attach waits for the plugin to exit. It fails early if the plugin never prints its port:
		// the plugin has then exited (its stdout closed) or printed something else, so stop it.
		err = proxy.Attach(ctx, cmd)
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) && ctx.Err() == nil {
			_ = cmd.Process.Kill()
			return fmt.Errorf("policy pack %s: %w", dir, err)
		}
	} else {
		err = cmd.Wait()
	}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return nil // end of stream: exit code 0
	case errors.As(err, &exitErr):
		if status, ok := exitErr.Sys().(syscall.WaitStatus); ok {
			return out.send(&pulumirpc.RunPluginResponse{
				Output: &pulumirpc.RunPluginResponse_Exitcode{Exitcode: int32(status.ExitStatus())}, //nolint:gosec
			})
		}
		return fmt.Errorf("plugin exited unexpectedly: %w", err)
	default:
		return err // the engine went away (ctx) or the plugin could not be waited for
	}
}

// pluginPython returns the interpreter for a plugin: its own virtualenv (runtime.options.virtualenv of
// PulumiPolicy.yaml/PulumiPlugin.yaml, relative to the plugin directory), else the program's, else python3.
func (h *host) pluginPython(req *pulumirpc.RunPluginRequest) (string, string, error) {
	info := req.GetInfo()
	venv, root := "", info.GetRootDirectory()
	if root == "" {
		root = info.GetProgramDirectory()
	}
	if opts := info.GetOptions(); opts != nil {
		venv = opts.GetFields()["virtualenv"].GetStringValue()
	}
	from := "the plugin's runtime.options.virtualenv"
	if venv == "" {
		venv, root = projectVirtualenv(req.GetPwd())
		from = "the program's runtime.options.virtualenv (Pulumi.yaml)"
	}
	if venv == "" && h.virtualenv != "" {
		venv, root = h.virtualenv, h.root
		from = "-virtualenv"
	}
	if venv == "" {
		return "python3", "", nil
	}
	if !filepath.IsAbs(venv) {
		venv = filepath.Join(root, venv)
	}
	python := filepath.Join(venv, "bin", "python")
	if _, err := os.Stat(python); err != nil {
		return "", "", fmt.Errorf("%s is not a virtualenv (%s): create it and install pulumi-policy in it", venv, from)
	}
	return python, venv, nil
}

// projectVirtualenv reads runtime.options.virtualenv from the Pulumi.yaml of the project holding dir;
// it returns the value and the project directory it is relative to.
func projectVirtualenv(dir string) (string, string) {
	for d := dir; d != ""; {
		for _, name := range []string{"Pulumi.yaml", "Pulumi.yml"} {
			data, err := os.ReadFile(filepath.Join(d, name))
			if err != nil {
				continue
			}
			var project struct {
				Runtime yaml.Node `yaml:"runtime"`
			}
			var rt struct {
				Options struct {
					Virtualenv string `yaml:"virtualenv"`
				} `yaml:"options"`
			}
			if yaml.Unmarshal(data, &project) != nil || project.Runtime.Kind != yaml.MappingNode ||
				project.Runtime.Decode(&rt) != nil {
				return "", d // `runtime: python`: no options
			}
			return rt.Options.Virtualenv, d
		}
		parent := filepath.Dir(d)
		if parent == d {
			break
		}
		d = parent
	}
	return "", ""
}

// policyEnv adds the stack's settings that pulumi-policy (and `python -m pulumi.policy`) read from the
// environment, from the engine's ConfigureStack request (nil when the engine sent none).
func policyEnv(env []string, config *pulumirpc.AnalyzerStackConfigureRequest) ([]string, error) {
	if config == nil {
		return env, nil
	}
	add := func(k, v string) {
		if v != "" {
			env = append(env, k+"="+v)
		}
	}
	add("PULUMI_ORGANIZATION", config.GetOrganization())
	add("PULUMI_PROJECT", config.GetProject())
	add("PULUMI_STACK", config.GetStack())
	add("PULUMI_DRY_RUN", strconv.FormatBool(config.GetDryRun()))
	if config.GetConfig() != nil {
		data, err := json.Marshal(config.GetConfig())
		if err != nil {
			return nil, fmt.Errorf("could not marshal the stack configuration: %w", err)
		}
		add("PULUMI_CONFIG", string(data))
	}
	if keys := config.GetConfigSecretKeys(); len(keys) > 0 {
		data, err := json.Marshal(keys)
		if err != nil {
			return nil, err
		}
		add("PULUMI_CONFIG_SECRET_KEYS", string(data))
	}
	return env, nil
}

// getenv returns the last value of key in env (later entries win, as in exec).
func getenv(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// streamSender sends RunPlugin responses one at a time: the plugin's stdout and stderr are copied by
// different goroutines (and the policy proxy's), and a gRPC stream allows one sender at a time. Output
// arriving after the call has returned is dropped.
type streamSender struct {
	mu     sync.Mutex
	server grpc.ServerStreamingServer[pulumirpc.RunPluginResponse]
	closed bool
}

func (s *streamSender) send(msg *pulumirpc.RunPluginResponse) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return io.ErrClosedPipe
	}
	return s.server.Send(msg)
}

func (s *streamSender) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

func (s *streamSender) writer(stderr bool) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		b := append([]byte(nil), p...) // the caller may reuse p
		msg := &pulumirpc.RunPluginResponse{Output: &pulumirpc.RunPluginResponse_Stdout{Stdout: b}}
		if stderr {
			msg.Output = &pulumirpc.RunPluginResponse_Stderr{Stderr: b}
		}
		if err := s.send(msg); err != nil {
			return 0, err
		}
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
