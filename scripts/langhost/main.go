// pulumi-language-python: a minimal Pulumi language host for this project's Python program.
//
// Why it exists: the Go module proxy reachable from our build machines refuses every version of
// Pulumi's own language-host module (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3),
// so scripts/toolchain builds this one instead. It does what the official host does for a pip
// virtualenv project: run Pulumi's `pulumi-language-python-exec` (shipped in the sdk/v3 module and
// installed beside this binary) with the project's virtualenv python, passing the engine's run
// request as arguments and the stack config as PULUMI_CONFIG. Plugins are provided by the toolchain,
// so it reports no required plugins or packages. It also runs Python policy packs (`pulumi preview
// --policy-pack DIR`) the way Pulumi's host does: RunPlugin, in plugin.go.
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
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
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
