// kiln in Azure: the Function App (Linux, custom handler), its storage, the
// Service Bus queues between functions, the gallery kiln publishes to, the
// identities and their roles, and the Event Grid subscription that tells
// `base_image_events` when a parent gallery publishes a version.
//
// Deploy into the resource group that will hold kiln and its image templates:
//   az deployment group create -g rg-kiln -f infra/main.bicep \
//     -p parentGalleryResourceGroup=rg-base-images parentGalleryName=corpBase eventsKey=<random>
// Not deployed from this repository's CI; see infra/README.md for what to check.

targetScope = 'resourceGroup'

@description('Region of every regional resource; also the marketplace region kiln watches (KILN_AZURE_LOCATION).')
param location string = resourceGroup().location

@description('Short prefix for resource names.')
@minLength(3)
@maxLength(11)
param prefix string = 'kiln'

@description('Run the app as a user-assigned identity (true) or its system-assigned one (false).')
param useUserAssignedIdentity bool = false

@description('Name of the Compute Gallery kiln publishes versions to (created here).')
param galleryName string = '${prefix}Gallery'

@description('Resource group of the parent gallery whose new versions trigger builds. Empty: no Event Grid subscription.')
param parentGalleryResourceGroup string = ''

@description('Name of the parent gallery in that resource group.')
param parentGalleryName string = ''

@description('Create the Event Grid subscription. Leave false on the first deployment: Event Grid checks the function endpoint, which exists only once the app code is published.')
param subscribeToParentGallery bool = false

@description('Key required on the events webhook (KILN_EVENTS_KEY). Prefer a Key Vault reference in production.')
@secure()
param eventsKey string

@description('Optional outgoing webhook for kiln CloudEvents (KILN_WEBHOOK_URL / KILN_WEBHOOK_SECRET).')
param webhookUrl string = ''
@secure()
param webhookSecret string = ''

@description('Subscriptions searched for VMs using gallery images (comma-separated). Empty: all the app identity can read.')
param inventorySubscriptions string = ''

@description('Builds active at once across all pipelines (KILN_MAX_ACTIVE_BUILDS).')
@minValue(1)
param maxActiveBuilds int = 4

var suffix = uniqueString(resourceGroup().id)
var storageName = toLower('${prefix}${suffix}')
var sbName = '${prefix}-sb-${suffix}'

// ---------------------------------------------------------------- identities

// The identity AIB builds run as (named in every image template's `identity`).
resource aibIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${prefix}-aib'
  location: location
}

resource appUserIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = if (useUserAssignedIdentity) {
  name: '${prefix}-app'
  location: location
}

// ---------------------------------------------------------------- storage

// AzureWebJobsStorage: the Functions host's leases and timer state, and kiln's build state.
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: take(storageName, 24)
  location: location
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    supportsHttpsTrafficOnly: true
  }
}

// ---------------------------------------------------------------- Service Bus

resource serviceBus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: sbName
  location: location
  sku: { name: 'Standard', tier: 'Standard' } // Standard: scheduled messages and duplicate detection
  properties: {
    disableLocalAuth: true // Entra ID only: kiln and the host both use the managed identity
    minimumTlsVersion: '1.2'
  }
}

// Requests are deduplicated on MessageId (kiln sends its dedupe key there);
// a request that fails five times is dead-lettered for a person to read.
resource buildRequests 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: serviceBus
  name: 'build-requests'
  properties: {
    maxDeliveryCount: 5
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT1H'
    deadLetteringOnMessageExpiration: true
    lockDuration: 'PT5M' // as long as host.json's functionTimeout
  }
}

// Polls are scheduled messages (ScheduledEnqueueTimeUtc). A lost poll is
// found again by build_sweeper, so more redeliveries are cheap insurance.
resource buildPolls 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: serviceBus
  name: 'build-polls'
  properties: {
    maxDeliveryCount: 10
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    deadLetteringOnMessageExpiration: true
    lockDuration: 'PT5M'
  }
}

// ---------------------------------------------------------------- gallery

resource gallery 'Microsoft.Compute/galleries@2023-07-03' = {
  name: galleryName
  location: location
  properties: {
    description: 'Golden images published by kiln'
  }
}

// ---------------------------------------------------------------- Function App

// Elastic Premium: Linux custom handlers, no cold-start timeouts on the
// Service Bus triggers, and room for the 5-minute functionTimeout in host.json.
resource plan 'Microsoft.Web/serverfarms@2023-12-01' = {
  name: '${prefix}-plan'
  location: location
  kind: 'elastic'
  sku: { name: 'EP1', tier: 'ElasticPremium' }
  properties: {
    reserved: true // Linux
    maximumElasticWorkerCount: 1
  }
}

var identityClientSettings = useUserAssignedIdentity ? [
  { name: 'AZURE_CLIENT_ID', value: appUserIdentity!.properties.clientId }
  // Tell the host's identity-based connections which identity to use.
  { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
  { name: 'AzureWebJobsStorage__clientId', value: appUserIdentity!.properties.clientId }
  { name: 'ServiceBusConnection__credential', value: 'managedidentity' }
  { name: 'ServiceBusConnection__clientId', value: appUserIdentity!.properties.clientId }
] : []

var webhookSettings = empty(webhookUrl) ? [] : [
  { name: 'KILN_WEBHOOK_URL', value: webhookUrl }
  { name: 'KILN_WEBHOOK_SECRET', value: webhookSecret }
]

var inventorySettings = empty(inventorySubscriptions) ? [] : [
  { name: 'KILN_AZURE_INVENTORY_SUBSCRIPTIONS', value: inventorySubscriptions }
]

resource app 'Microsoft.Web/sites@2023-12-01' = {
  name: '${prefix}-func-${suffix}'
  location: location
  kind: 'functionapp,linux'
  identity: useUserAssignedIdentity ? {
    type: 'UserAssigned'
    userAssignedIdentities: { '${appUserIdentity!.id}': {} }
  } : {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      linuxFxVersion: '' // custom handler: the host starts the `kiln serve` binary named in host.json
      ftpsState: 'Disabled'
      minTlsVersion: '1.2'
      // Until kiln's Table Storage store lands, the embedded store under
      // KILN_DATA_DIR must have one writer: keep the app on one instance.
      functionAppScaleLimit: 1
      appSettings: concat([
        { name: 'FUNCTIONS_EXTENSION_VERSION', value: '~4' }
        { name: 'FUNCTIONS_WORKER_RUNTIME', value: 'custom' }
        { name: 'AzureWebJobsStorage__accountName', value: storage.name }
        // Elastic Premium's content share still takes a key-based connection string.
        { name: 'WEBSITE_CONTENTAZUREFILECONNECTIONSTRING', value: 'DefaultEndpointsProtocol=https;AccountName=${storage.name};AccountKey=${storage.listKeys().keys[0].value};EndpointSuffix=${environment().suffixes.storage}' }
        { name: 'WEBSITE_CONTENTSHARE', value: toLower('${prefix}-content') }
        // Read by the Service Bus trigger bindings and by kiln's queue adapter alike.
        { name: 'ServiceBusConnection__fullyQualifiedNamespace', value: '${serviceBus.name}.servicebus.windows.net' }
        { name: 'KILN_PROVIDER', value: 'azure' }
        { name: 'KILN_EVENTS_KEY', value: eventsKey }
        { name: 'KILN_MAX_ACTIVE_BUILDS', value: string(maxActiveBuilds) }
        { name: 'KILN_DATA_DIR', value: '/home/data/kiln' } // /home persists across restarts
        { name: 'KILN_PIPELINES_DIR', value: 'pipelines' }
        { name: 'KILN_HANDLERS_DIR', value: '.' } // function.json folders sit at the app root once published
        { name: 'AZURE_SUBSCRIPTION_ID', value: subscription().subscriptionId }
        { name: 'KILN_AZURE_LOCATION', value: location }
        { name: 'KILN_AZURE_RESOURCE_GROUP', value: resourceGroup().name } // image templates live here
      ], identityClientSettings, webhookSettings, inventorySettings)
    }
  }
}

var appPrincipalId = useUserAssignedIdentity ? appUserIdentity!.properties.principalId : app.identity.principalId

// ---------------------------------------------------------------- roles

// Built-in role ids (stable across tenants).
var roles = {
  contributor: 'b24988ac-6180-42a0-ab88-20f7382dd24c'
  managedIdentityOperator: 'f1a07417-d97a-45cb-824c-7a7467783830'
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
}

// The app creates, runs, cancels and deletes image templates in this group.
resource templateOperator 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'kiln-image-template-operator')
  properties: {
    roleName: 'kiln image template operator (${resourceGroup().name})'
    description: 'Manage and run Azure VM Image Builder templates.'
    type: 'CustomRole'
    assignableScopes: [ resourceGroup().id ]
    permissions: [
      {
        actions: [
          'Microsoft.VirtualMachineImages/imageTemplates/*'
          'Microsoft.VirtualMachineImages/locations/operations/read'
        ]
      }
    ]
  }
}

// What AIB's build identity needs to publish versions to kiln's gallery.
resource imageDistributor 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'kiln-image-distributor')
  properties: {
    roleName: 'kiln image distributor (${resourceGroup().name})'
    description: 'Let Azure VM Image Builder write gallery image versions.'
    type: 'CustomRole'
    assignableScopes: [ resourceGroup().id ]
    permissions: [
      {
        actions: [
          'Microsoft.Compute/galleries/read'
          'Microsoft.Compute/galleries/images/read'
          'Microsoft.Compute/galleries/images/versions/read'
          'Microsoft.Compute/galleries/images/versions/write'
          'Microsoft.Compute/images/read'
          'Microsoft.Compute/images/write'
          'Microsoft.Compute/images/delete'
        ]
      }
    ]
  }
}

resource appTemplates 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, appPrincipalId, 'templates')
  properties: {
    roleDefinitionId: templateOperator.id
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Naming the AIB identity in a template is an assign action on that identity.
resource appAssignsAibIdentity 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(aibIdentity.id, appPrincipalId, roles.managedIdentityOperator)
  scope: aibIdentity
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.managedIdentityOperator)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource aibDistributes 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, aibIdentity.id, 'distributor')
  properties: {
    roleDefinitionId: imageDistributor.id
    principalId: aibIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Retention: list, deprecate (PATCH) and delete versions of kiln's gallery.
resource appGallery 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(gallery.id, appPrincipalId, roles.contributor)
  scope: gallery
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.contributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appSend 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus.id, appPrincipalId, roles.serviceBusDataSender)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appReceive 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus.id, appPrincipalId, roles.serviceBusDataReceiver)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource appStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for r in [ roles.storageBlobDataOwner, roles.storageQueueDataContributor, roles.storageTableDataContributor ]: {
  name: guid(storage.id, appPrincipalId, r)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', r)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}]

// ---------------------------------------------------------------- parent gallery

// Reader on the parent gallery's group (AIB reads the source version; kiln
// lists the versions) and the Event Grid system topic there. Reader across the
// subscriptions whose VMs retention must see is infra/inventory-reader.bicep.
module parent 'modules/parent-gallery.bicep' = if (!empty(parentGalleryResourceGroup)) {
  name: 'kiln-parent-gallery'
  scope: resourceGroup(parentGalleryResourceGroup)
  params: {
    parentGalleryName: parentGalleryName
    readerPrincipalIds: [ appPrincipalId, aibIdentity.properties.principalId ]
    subscribe: subscribeToParentGallery
    functionResourceId: '${app.id}/functions/base_image_events'
  }
}

output functionAppName string = app.name
output appPrincipalId string = appPrincipalId
output aibIdentityId string = aibIdentity.id
output galleryId string = gallery.id
output serviceBusNamespace string = '${serviceBus.name}.servicebus.windows.net'
