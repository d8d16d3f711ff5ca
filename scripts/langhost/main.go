// pulumi-language-python: a minimal Pulumi language host for this project's Python program.
//
// Why it exists: the Go module proxy reachable from our build machines refuses every version of
// Pulumi's own language-host module (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3),
// so scripts/toolchain builds this one instead. It does what the official host does for a pip
// virtualenv project: run Pulumi's `pulumi-language-python-exec` (shipped in the sdk/v3 module and
// installed beside this binary) with the project's virtualenv python, passing the engine's run
// request as arguments and the stack config as PULUMI_CONFIG. Plugins are provided by the toolchain,
// so it reports no required plugins or packages. It also runs Python policy packs (`pulumi preview
// --policy-pack DIR`) the way Pulumi's host does: RunPlugin, below.
//
// It differs from the official host in two ways (docs/toolchain.md): the program runs through
// pulumi_python_host.py (installed beside this binary), and the host and the program exit when the
// engine that started them is gone, so a SIGKILLed `pulumi up` leaves no process behind.
package main

import (
	"context"
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
	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Exit code with which pulumi-language-python-exec says it already showed the user an error.
const execShowedError = 32

type host struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	engineAddress string
	execScript    string
	pythonHost    string
	virtualenv    string // from -virtualenv, or the program's runtime options
	root          string

	mu       sync.Mutex
	programs map[*exec.Cmd]struct{} // running programs, killed when the engine goes away
}

func main() {
	self, err := os.Executable()
	if err != nil {
		fatal(err)
	}
	dir := filepath.Dir(self)
	h := &host{
		execScript: filepath.Join(dir, "pulumi-language-python-exec"),
		pythonHost: filepath.Join(dir, "pulumi_python_host.py"),
		programs:   map[*exec.Cmd]struct{}{},
	}
	go h.exitWithEngine(os.Getppid())
	// The engine passes `-name=value` runtime options and flags, then the engine address. Options
	// this host does not use (tracing, toolchain, typechecker, ...) are accepted and ignored.
	for _, arg := range os.Args[1:] {
		if !strings.HasPrefix(arg, "-") {
			h.engineAddress = arg
			continue
		}
		name, value, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		switch name {
		case "virtualenv":
			h.virtualenv = value
		case "root":
			h.root = value
		}
	}
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, h)
			return nil
		},
	})
	if err != nil {
		fatal(err)
	}
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fatal(err)
	}
}

// exitWithEngine ends the host (and its programs) once its parent, the engine, has exited: an
// orphan is re-parented, so the parent pid changes.
func (h *host) exitWithEngine(engine int) {
	for os.Getppid() == engine {
		time.Sleep(time.Second)
	}
	h.mu.Lock()
	for cmd := range h.programs {
		_ = cmd.Process.Kill()
	}
	os.Exit(1)
}

// runProgram runs cmd to completion, as a child that dies with this host (see start).
func (h *host) runProgram(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	done, err := h.start(cmd)
	if err != nil {
		return err
	}
	defer done()
	return cmd.Wait()
}

// start starts cmd and registers it with exitWithEngine until done is called. Pdeathsig also kills
// it if this host is killed: it fires when the forking OS thread exits, so the caller must hold
// runtime.LockOSThread until the process has been waited for.
func (h *host) start(cmd *exec.Cmd) (done func(), err error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.programs[cmd] = struct{}{}
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		delete(h.programs, cmd)
		h.mu.Unlock()
	}, nil
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "pulumi-language-python: %v\n", err)
	os.Exit(1)
}

func (h *host) Handshake(_ context.Context, req *pulumirpc.LanguageHandshakeRequest) (*pulumirpc.LanguageHandshakeResponse, error) {
	h.engineAddress = req.GetEngineAddress()
	if req.RootDirectory != nil {
		h.root = req.GetRootDirectory()
	}
	return &pulumirpc.LanguageHandshakeResponse{}, nil
}

// python returns the interpreter: the project's virtualenv when configured, else python3.
func (h *host) python(info *pulumirpc.ProgramInfo) (string, string) {
	venv := h.virtualenv
	root := h.root
	if info != nil {
		if root == "" {
			root = info.GetRootDirectory()
		}
		if opts := info.GetOptions(); opts != nil {
			if v, ok := opts.GetFields()["virtualenv"]; ok && v.GetStringValue() != "" {
				venv = v.GetStringValue()
			}
		}
	}
	if venv == "" {
		return "python3", ""
	}
	if !filepath.IsAbs(venv) && root != "" {
		venv = filepath.Join(root, venv)
	}
	return filepath.Join(venv, "bin", "python"), venv
}

func (h *host) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	python, venv := h.python(req.GetInfo())
	args := []string{"-u", h.pythonHost, "program", h.execScript}
	add := func(name, value string) {
		if value != "" {
			args = append(args, "--"+name, value)
		}
	}
	add("monitor", req.GetMonitorAddress())
	add("engine", h.engineAddress)
	add("project", req.GetProject())
	add("stack", req.GetStack())
	add("pwd", req.GetPwd())
	add("dry_run", fmt.Sprint(req.GetDryRun()))
	add("parallel", fmt.Sprint(req.GetParallel()))
	add("organization", req.GetOrganization())
	if info := req.GetInfo(); info != nil {
		add("root_directory", info.GetRootDirectory())
	}
	program := req.GetProgram()
	if info := req.GetInfo(); info != nil && info.GetEntryPoint() != "" {
		program = filepath.Join(info.GetProgramDirectory(), info.GetEntryPoint())
	}
	if program == "" {
		program = "."
	}
	args = append(append(args, program), req.GetArgs()...)

	// A stack without config must still send `{}` and `[]`: the exec script iterates over them.
	configMap, keys := req.GetConfig(), req.GetConfigSecretKeys()
	if configMap == nil {
		configMap = map[string]string{}
	}
	if keys == nil {
		keys = []string{}
	}
	config, err := json.Marshal(configMap)
	if err != nil {
		return nil, err
	}
	secretKeys, err := json.Marshal(keys)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, python, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "PULUMI_CONFIG="+string(config), "PULUMI_CONFIG_SECRET_KEYS="+string(secretKeys))
	if venv != "" {
		cmd.Env = append(cmd.Env, "VIRTUAL_ENV="+venv, "PATH="+filepath.Join(venv, "bin")+":"+os.Getenv("PATH"))
	}
	if err := h.runProgram(cmd); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if exitErr.ExitCode() == execShowedError {
				return &pulumirpc.RunResponse{Bail: true}, nil
			}
			return &pulumirpc.RunResponse{Error: fmt.Sprintf("Program exited with non-zero exit code: %d", exitErr.ExitCode())}, nil
		}
		return &pulumirpc.RunResponse{Error: fmt.Sprintf("could not run %s: %v", python, err)}, nil
	}
	return &pulumirpc.RunResponse{}, nil
}

func (h *host) GetRequiredPlugins(context.Context, *pulumirpc.GetRequiredPluginsRequest) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return &pulumirpc.GetRequiredPluginsResponse{}, nil
}

func (h *host) GetRequiredPackages(context.Context, *pulumirpc.GetRequiredPackagesRequest) (*pulumirpc.GetRequiredPackagesResponse, error) {
	return &pulumirpc.GetRequiredPackagesResponse{}, nil
}

func (h *host) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

// InstallDependencies has nothing to do: scripts/setup creates the virtualenv from requirements.txt.
func (h *host) InstallDependencies(*pulumirpc.InstallDependenciesRequest, grpc.ServerStreamingServer[pulumirpc.InstallDependenciesResponse]) error {
	return nil
}

func (h *host) RuntimeOptionsPrompts(context.Context, *pulumirpc.RuntimeOptionsRequest) (*pulumirpc.RuntimeOptionsResponse, error) {
	return &pulumirpc.RuntimeOptionsResponse{}, nil
}

func (h *host) About(_ context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	python, _ := h.python(req.GetInfo())
	out, err := exec.Command(python, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", python, err)
	}
	return &pulumirpc.AboutResponse{Executable: python, Version: strings.TrimPrefix(strings.TrimSpace(string(out)), "Python ")}, nil
}

func (h *host) GetProgramDependencies(context.Context, *pulumirpc.GetProgramDependenciesRequest) (*pulumirpc.GetProgramDependenciesResponse, error) {
	return &pulumirpc.GetProgramDependenciesResponse{}, nil
}

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
